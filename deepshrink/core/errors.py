"""Exception types. Every user-facing failure is a ``DeepShrinkError`` with a one-line message."""

from __future__ import annotations


class DeepShrinkError(Exception):
    """Base of every error deepshrink raises on purpose; the CLI prints it as one line."""


class ConfigError(DeepShrinkError, ValueError):
    """A setting, ratio, bit width, recipe key or name is invalid."""


class UsageError(ConfigError):
    """A command-line option value is invalid (the CLI exits 2, as argparse does for its own checks)."""


class DataError(DeepShrinkError):
    """A dataset is unknown, missing or malformed."""


class ModelError(DeepShrinkError):
    """A model is unknown, cannot be built, traced or transformed."""


class ArtifactError(DeepShrinkError):
    """An artifact file cannot be written or read."""


class CorruptArtifactError(ArtifactError):
    """The artifact is truncated, bit-flipped, has the wrong magic or inconsistent sizes."""


class UnsupportedVersionError(ArtifactError):
    """The artifact was written by a newer format version than this reader knows."""
