"""Adaptive range coding of small integer streams: exact round trips, compression near the entropy on
skewed codes, no table overhead on short streams, and clear errors on bad input or corrupt streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec import arith, huffman
from deepshrink.core.errors import ConfigError, CorruptArtifactError


def _entropy_bytes(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_round_trip_any_alphabet_and_center(alphabet: int, data: st.DataObject) -> None:
    symbols = np.array(data.draw(st.lists(st.integers(0, alphabet - 1), max_size=200)), dtype=np.int64)
    center = data.draw(st.integers(0, alphabet - 1))
    out = arith.decode(arith.encode(symbols, alphabet, center), alphabet, symbols.size, center)
    assert np.array_equal(out, symbols)


def test_round_trip_per_symbol_centers_and_edges() -> None:
    rng = np.random.default_rng(0)
    for alphabet in (2, 3, 16, 256, 65536):
        centers = rng.integers(0, alphabet, 500)
        symbols = np.clip(centers + np.round(rng.laplace(0, 3, 500)).astype(np.int64), 0, alphabet - 1)
        data = arith.encode(symbols, alphabet, centers)
        assert np.array_equal(arith.decode(data, alphabet, 500, centers), symbols)
    assert arith.encode(np.zeros(0, np.int64), 256, 128) == b""
    assert arith.decode(b"", 256, 0, 128).size == 0
    assert np.array_equal(arith.decode(arith.encode(np.zeros(9, np.int64), 1), 1, 9), np.zeros(9))


def test_skewed_codes_near_entropy_and_below_huffman_on_short_streams() -> None:
    rng = np.random.default_rng(1)
    for bits, spread, n in ((8, 25.0, 2000), (4, 1.5, 2000), (2, 0.4, 2000)):
        half = 2 ** (bits - 1)
        symbols = np.clip(np.round(rng.laplace(0, spread, n)) + half, 1, 2**bits - 1).astype(np.int64)
        coded = arith.encode(symbols, 2**bits, half)
        assert len(coded) < 1.03 * _entropy_bytes(symbols) + 40  # adaptive: a few contexts to learn
        assert len(coded) < len(huffman.encode(symbols, 2**bits))  # no code-length table to pay
        assert np.array_equal(arith.decode(coded, 2**bits, n, half), symbols)


def test_bad_input_is_config_error() -> None:
    with pytest.raises(ConfigError):
        arith.encode(np.array([3]), 3, 0)
    with pytest.raises(ConfigError):
        arith.encode(np.array([0.5]), 3, 0)
    with pytest.raises(ConfigError):
        arith.encode(np.array([1, 2]), 4, np.array([0, 1, 2]))
    with pytest.raises(ConfigError):
        arith.encode(np.array([1]), 4, 4)
    with pytest.raises(ConfigError):
        arith.encode(np.array([1]), 0, 0)


def test_padded_or_impossible_streams_are_corrupt() -> None:
    rng = np.random.default_rng(2)
    symbols = np.clip(np.round(rng.laplace(0, 20, 300)) + 128, 0, 255).astype(np.int64)
    coded = arith.encode(symbols, 256, 128)
    with pytest.raises(CorruptArtifactError):
        arith.decode(coded + b"\x01\x02\x03\x04\x05\x06", 256, 300, 128)
    # a stream of 0xff bytes asks for magnitudes past a 3-symbol alphabet's largest (1)
    with pytest.raises(CorruptArtifactError):
        arith.decode(b"\xff" * 64, 3, 50, 1)
