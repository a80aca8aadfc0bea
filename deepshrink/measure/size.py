"""On-disk sizes and compression ratios: what a compressed artifact really costs."""

from __future__ import annotations

import os

from deepshrink.core.errors import ArtifactError, ConfigError


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Size in bytes of the real file at ``path`` (symlinks followed)."""
    if not os.path.exists(path):
        raise ArtifactError(f"artifact not found: {os.fspath(path)}")
    if not os.path.isfile(path):
        raise ArtifactError(f"artifact is not a regular file: {os.fspath(path)}")
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read size of {os.fspath(path)}: {exc.strerror or exc}") from None


def compression_ratio(fp32_bytes: int, artifact_bytes: int) -> float:
    """How many times smaller the artifact is than the dense float32 model (``fp32 / artifact``)."""
    if fp32_bytes < 0:
        raise ConfigError(f"fp32_bytes must be >= 0, got {fp32_bytes}")
    if artifact_bytes <= 0:
        raise ConfigError(f"artifact_bytes must be > 0, got {artifact_bytes}")
    return fp32_bytes / artifact_bytes
