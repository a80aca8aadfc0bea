"""Lossless float32 bit-field packing: bit-exact round trips (zeros, subnormals, inf, NaN), sizes that
follow the bits that vary, and clear errors for wrong input or corrupt streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec import floatpack
from deepshrink.core.errors import ConfigError, CorruptArtifactError


def _bits(a: np.ndarray) -> list[int]:
    return a.astype(np.float32).view(np.uint32).tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=60))
def test_round_trip_is_bit_exact(values: list[float]) -> None:
    arr = np.array(values, dtype=np.float32)
    data = floatpack.encode(arr)
    assert _bits(floatpack.decode(data, arr.size)) == _bits(arr)
    assert len(data) <= 3 + 4 * arr.size + 1 and floatpack.nbytes(arr.size, data) == len(data)


def test_special_values_and_negative_zero() -> None:
    arr = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4e38], dtype=np.float32)
    assert _bits(floatpack.decode(floatpack.encode(arr), arr.size)) == _bits(arr)


def test_size_follows_varying_bits() -> None:
    rng = np.random.default_rng(0)
    scales = (rng.uniform(1.0, 1.9, 64) * 2.0**-7).astype(np.float32)  # one exponent, all positive
    assert len(floatpack.encode(scales)) == 3 + (64 * 23 + 7) // 8
    halves = np.float16(rng.uniform(0.001, 0.01, 64)).astype(np.float32)  # float16 precision: 10 bits
    assert len(floatpack.encode(halves)) <= 3 + (64 * (10 + 3) + 7) // 8
    assert floatpack.encode(np.zeros(0, np.float32)) == b""
    assert len(floatpack.encode(np.full(100, 0.5, np.float32))) == 3  # nothing varies


def test_wrong_dtype_and_corrupt_streams() -> None:
    with pytest.raises(ConfigError):
        floatpack.encode(np.zeros(3, np.float64))
    data = floatpack.encode(np.linspace(-1, 1, 10, dtype=np.float32))
    for bad in (data[:-1], data + b"\0", data[:2], bytes([0xFF]) + data[1:], data[:2] + bytes([24]) + data[3:]):
        with pytest.raises(CorruptArtifactError):
            floatpack.decode(bad, 10)
    overflow = bytes([(8 << 2) | 0, 200, 0]) + b"\xff"  # exponent offset 255 + e0 200 is past 255
    with pytest.raises(CorruptArtifactError):
        floatpack.decode(overflow, 1)


def test_round_trip_across_packing_chunks() -> None:
    rng = np.random.default_rng(3)
    for n in (65535, 65536, 65537 + 8):
        arr = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 1e3], n)).astype(np.float32)
        data = floatpack.encode(arr)
        assert _bits(floatpack.decode(data, n)) == _bits(arr) and len(data) < 4 * n
