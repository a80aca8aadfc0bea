"""Shared building blocks: errors, registry, atomic file I/O."""

from deepshrink.core.errors import (
    ArtifactError,
    ConfigError,
    CorruptArtifactError,
    DataError,
    DeepShrinkError,
    ModelError,
    UnsupportedVersionError,
)
from deepshrink.core.registry import Registry

__all__ = [
    "ArtifactError",
    "ConfigError",
    "CorruptArtifactError",
    "DataError",
    "DeepShrinkError",
    "ModelError",
    "Registry",
    "UnsupportedVersionError",
]
