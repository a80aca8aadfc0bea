"""Deep Compression relative indices: hand-worked examples, filler placement, round trips, width choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec.huffman import encoded_payload_bits
from deepshrink.codec.sparse import (
    best_index_bits,
    count_fillers,
    decode_positions,
    encode_positions,
    index_stream_bits,
)
from deepshrink.core.errors import ConfigError, CorruptArtifactError


def test_hand_worked_example() -> None:
    # b=3, ESC=7: cursor -1 -> 0 (step 1, sym 0) -> 3 (step 3, sym 2);
    # then gap 37 = 5 fillers of 7 + a step of 2 (sym 1) -> 40
    symbols = encode_positions(np.array([0, 3, 40]), 41, 3)
    assert symbols.dtype == np.uint16
    assert symbols.tolist() == [0, 2, 7, 7, 7, 7, 7, 1]
    assert count_fillers(symbols, 3) == 5
    assert decode_positions(symbols, 41, 3).tolist() == [0, 3, 40]


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_fillers_exactly_when_needed(bits: int) -> None:
    esc = (1 << bits) - 1
    # first gap is position + 1: a gap of exactly ESC fits one symbol, a gap of ESC + 1 needs one filler
    assert encode_positions(np.array([esc - 1]), esc, bits).tolist() == [esc - 1]
    assert encode_positions(np.array([esc]), esc + 1, bits).tolist() == [esc, 0]
    assert encode_positions(np.array([2 * esc - 1]), 2 * esc, bits).tolist() == [esc, esc - 1]
    assert encode_positions(np.array([2 * esc]), 2 * esc + 1, bits).tolist() == [esc, esc, 0]
    # the same rule holds between two non-zeros, not only from the start cursor
    assert encode_positions(np.array([0, esc + 1]), esc + 2, bits).tolist() == [0, esc, 0]


def test_one_bit_indices() -> None:
    symbols = encode_positions(np.array([0, 1, 3, 6]), 7, 1)  # gaps 1, 1, 2, 3
    assert symbols.tolist() == [0, 0, 1, 0, 1, 1, 0]
    assert decode_positions(symbols, 7, 1).tolist() == [0, 1, 3, 6]


def test_empty_positions() -> None:
    assert encode_positions(np.zeros(0, dtype=np.int64), 10, 4).size == 0
    assert decode_positions(np.zeros(0, dtype=np.uint16), 10, 4).size == 0


@st.composite
def _position_sets(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    length = draw(st.integers(1, 3000))
    chosen = draw(st.sets(st.integers(0, length - 1), max_size=60))
    return np.array(sorted(chosen), dtype=np.int64), length, draw(st.integers(1, 16))


@settings(max_examples=200, deadline=None)
@given(_position_sets())
def test_round_trip_property(case: tuple[np.ndarray, int, int]) -> None:
    positions, length, bits = case
    symbols = encode_positions(positions, length, bits)
    assert int(symbols.max(initial=0)) < (1 << bits)
    assert symbols.size - count_fillers(symbols, bits) == positions.size  # one real symbol per non-zero
    np.testing.assert_array_equal(decode_positions(symbols, length, bits), positions)
    assert index_stream_bits(positions, length, bits) == symbols.size * bits


@settings(max_examples=100, deadline=None)
@given(_position_sets())
def test_best_index_bits_is_the_minimum(case: tuple[np.ndarray, int, int]) -> None:
    positions, length, _ = case
    costs = {b: encode_positions(positions, length, b).size * b for b in range(1, 17)}
    expected = min(costs, key=lambda b: (costs[b], b))
    assert best_index_bits(positions, length) == expected


def test_best_index_bits_ties_and_candidates() -> None:
    # one gap of 4: b=1 -> 4 symbols * 1, b=2 -> 2 * 2, b=3 -> 1 * 3
    positions = np.array([3])
    assert best_index_bits(positions, 4) == 3
    assert best_index_bits(positions, 4, candidates=(2, 1)) == 1  # tie 4 == 4 -> smaller width
    assert best_index_bits(np.zeros(0, dtype=np.int64), 4, candidates=(5, 9)) == 5
    with pytest.raises(ConfigError):
        best_index_bits(positions, 4, candidates=())


def test_best_index_bits_with_huffman() -> None:
    rng = np.random.default_rng(5)
    positions = np.sort(rng.choice(20000, size=2000, replace=False))
    costs = {b: encoded_payload_bits(encode_positions(positions, 20000, b), 1 << b) for b in range(1, 17)}
    best = best_index_bits(positions, 20000, huffman=True)
    assert costs[best] == min(costs.values())
    assert index_stream_bits(positions, 20000, best, huffman=True) == costs[best]


@pytest.mark.parametrize(
    ("positions", "length", "bits", "match"),
    [
        ([3, 3], 10, 4, "strictly increasing"),
        ([5, 2], 10, 4, "strictly increasing"),
        ([-1], 10, 4, "negative"),
        ([10], 10, 4, "outside"),
        ([1], 10, 0, "index width"),
        ([1], 10, 17, "index width"),
        ([0.5], 10, 4, "integers"),
    ],
)
def test_encode_rejects_bad_input(positions: list[float], length: int, bits: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        encode_positions(np.array(positions), length, bits)


def test_decode_rejects_corrupt_streams() -> None:
    with pytest.raises(CorruptArtifactError, match="outside"):
        decode_positions(np.array([16]), 100, 4)
    with pytest.raises(CorruptArtifactError, match="array length"):
        decode_positions(np.array([0, 14]), 15, 4)  # reaches position 15
    with pytest.raises(CorruptArtifactError, match="filler"):
        decode_positions(np.array([0, 15]), 100, 4)
    with pytest.raises(CorruptArtifactError):
        decode_positions(np.array([[0]]), 100, 4)
