"""On-disk cache of generated dataset arrays, so slow builders (CSV parsing, synthesis) run once per machine.

Files are plain ``.npz`` archives (never pickle), written atomically, read with
``allow_pickle=False`` and checked against the expected keys, dtypes and shapes; a missing,
corrupt or stale file is simply rebuilt. The cache is an optimisation only: if the folder
cannot be written the arrays are still returned.

Location: ``$DEEPSHRINK_CACHE`` if set, else ``~/.cache/deepshrink``. Set
``DEEPSHRINK_CACHE=off`` to disable the disk cache entirely.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from deepshrink.core.errors import ArtifactError, DataError
from deepshrink.core.fileio import atomic_writer

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
# key -> (dtype, shape); a shape entry of -1 accepts any length on that axis.
Spec = Mapping[str, tuple[np.dtype | type, tuple[int, ...]]]

_DISABLED = {"off", "0", "none", "false", "no"}


def cache_dir() -> Path | None:
    """The disk cache folder, or ``None`` when disabled via ``DEEPSHRINK_CACHE=off``."""
    env = os.environ.get("DEEPSHRINK_CACHE")
    if env is not None and env.strip().lower() in _DISABLED:
        return None
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "deepshrink"


def _matches(arrays: Mapping[str, np.ndarray], spec: Spec) -> bool:
    if set(arrays) != set(spec):
        return False
    for key, (dtype, shape) in spec.items():
        arr = arrays[key]
        if arr.dtype != np.dtype(dtype) or arr.ndim != len(shape):
            return False
        if any(want != -1 and got != want for got, want in zip(arr.shape, shape)):
            return False
    return True


def _read(path: Path, spec: Spec) -> Arrays | None:
    """Load a cache file; ``None`` if it is missing, unreadable, corrupt or does not match ``spec``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        log.debug("ignoring unreadable dataset cache %s: %s", path, exc)
        return None
    if not _matches(arrays, spec):
        log.debug("ignoring stale dataset cache %s", path)
        return None
    return arrays


def _write(path: Path, arrays: Arrays) -> None:
    """Write arrays atomically; failures are logged and ignored (the cache is optional)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.savez(fh, **arrays)
    except (OSError, ArtifactError) as exc:
        log.debug("could not write dataset cache %s: %s", path, exc)


def cached_arrays(key: str, build: Callable[[], Arrays], spec: Spec,
                  valid: Callable[[Arrays], bool] | None = None) -> Arrays:
    """Return ``build()``'s arrays, from ``<cache_dir>/<key>.npz`` when a valid copy exists (right keys, dtypes
    and shapes, and ``valid(arrays)`` when given, e.g. labels in range: a tampered file is rebuilt)."""
    folder = cache_dir()
    if folder is None:
        return build()
    path = folder / f"{key}.npz"
    arrays = _read(path, spec)
    if arrays is not None and (valid is None or valid(arrays)):
        return arrays
    arrays = build()
    if not _matches(arrays, spec):
        raise DataError(f"dataset builder for cache key {key!r} returned arrays that do not match its spec")
    _write(path, arrays)
    return arrays
