"""Argument checks shared by the codec modules."""

from __future__ import annotations

import numpy as np

from deepshrink.core.errors import ConfigError


def check_int(value: object, what: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (no upper bound when ``hi`` is None), else one ConfigError line."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and (int(value) < lo or (hi is not None and int(value) > hi)):
        ok = False
    if not ok:
        bound = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        raise ConfigError(f"{what} must be {bound}, got {value!r}")
    return int(value)
