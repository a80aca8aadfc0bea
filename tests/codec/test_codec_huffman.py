"""Canonical Huffman coding: round trips, optimality, prefix-freeness, limits and malformed input."""

from __future__ import annotations

import heapq
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.codec import huffman
from deepshrink.codec.huffman import (
    HEADER_NBYTES,
    MAX_CODE_LEN,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    encoded_payload_bits,
    entropy_bits,
    validate_lengths,
)
from deepshrink.codec.packing import pack_bits
from deepshrink.core.errors import ConfigError, CorruptArtifactError

HEADER = struct.Struct("<BBIQQI")


def _reference_cost(counts: list[int]) -> int:
    """Total bits of an optimal (unlimited) Huffman code, by the textbook heap construction."""
    heap = [c for c in counts if c > 0]
    if len(heap) <= 1:
        return sum(heap)  # a lone symbol still spends one bit per occurrence
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged  # every merge adds one bit to each symbol below it
        heapq.heappush(heap, merged)
    return cost


def _assert_round_trip(symbols: np.ndarray, alphabet: int) -> bytes:
    data = encode(symbols, alphabet)
    out, used = decode(data)
    assert used == len(data)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.asarray(symbols, dtype=np.int64))
    return data


def _cases() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(7)
    sparse = rng.choice(65536, size=40, replace=False)
    return {
        "empty": (np.zeros(0, dtype=np.int64), 5),
        "one": (np.array([3]), 5),
        "one-repeated": (np.full(1000, 65535), 65536),
        "two": (np.array([0, 1, 1, 0, 1, 1]), 2),
        "skewed": (np.minimum(rng.geometric(0.25, 20000) - 1, 63), 64),
        "uniform": (rng.integers(0, 256, 20000), 256),
        "alphabet-65536-sparse": (rng.choice(sparse, 5000), 65536),
        "alphabet-1": (np.zeros(17, dtype=np.int64), 1),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_round_trip_cases(name: str) -> None:
    symbols, alphabet = _cases()[name]
    data = _assert_round_trip(symbols, alphabet)
    header = HEADER.unpack(data[:HEADER_NBYTES])
    assert header[2] == alphabet and header[3] == symbols.size
    assert header[4] == encoded_payload_bits(symbols, alphabet)


def test_codes_straddling_decode_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huffman, "_DECODE_CHUNK", 3)  # 24-bit chunks: many codes cross a boundary
    rng = np.random.default_rng(11)
    for symbols, alphabet in (
        (rng.integers(0, 3000, 500), 3000),
        (np.minimum(rng.geometric(0.2, 700), 40), 41),
    ):
        _assert_round_trip(symbols, alphabet)
    data = bytearray(encode(np.arange(100) % 7, 7))
    data[6:14] = (99).to_bytes(8, "little")  # one symbol fewer than the payload holds
    with pytest.raises(CorruptArtifactError, match="declared"):
        decode(bytes(data))


def test_sparse_alphabet_uses_compact_table() -> None:
    symbols, alphabet = _cases()["alphabet-65536-sparse"]
    data = encode(symbols, alphabet)
    payload = (encoded_payload_bits(symbols, alphabet) + 7) // 8
    assert HEADER.unpack(data[:HEADER_NBYTES])[1] == 1  # sparse table mode
    assert len(data) - HEADER_NBYTES - payload < 40 * 3  # 16 + 5 bits per used symbol, not 5 bits * 65536


def test_streams_concatenate() -> None:
    a, b = np.array([1, 2, 2, 3]), np.array([0, 0, 9])
    data = encode(a, 4) + encode(b, 10) + encode(np.zeros(0, dtype=int), 3)
    out_a, n_a = decode(data)
    out_b, n_b = decode(data[n_a:])
    out_c, n_c = decode(data[n_a + n_b :])
    np.testing.assert_array_equal(out_a, a)
    np.testing.assert_array_equal(out_b, b)
    assert out_c.size == 0 and n_a + n_b + n_c == len(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 300).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.integers(0, a - 1), max_size=400))
    )
)
def test_round_trip_property(case: tuple[int, list[int]]) -> None:
    alphabet, symbols = case
    _assert_round_trip(np.array(symbols, dtype=np.int64), alphabet)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=60))
def test_code_lengths_optimal_and_prefix_free(counts: list[int]) -> None:
    lengths = code_lengths(np.array(counts))
    cnt = np.array(counts)
    assert np.array_equal(lengths == 0, cnt == 0)  # only unused symbols get no code
    assert int(np.sum(cnt * lengths.astype(np.int64))) == _reference_cost(counts)
    validate_lengths(lengths)
    codes = canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)]
    assert all(len(w) == lengths[s] for w, s in zip(words, np.flatnonzero(lengths), strict=True))
    for i, u in enumerate(words):
        for j, v in enumerate(words):
            assert i == j or not v.startswith(u)


def test_canonical_codes_known_example() -> None:
    # lengths (A:2, B:1, C:3, D:3) -> B=0, A=10, C=110, D=111
    codes = canonical_codes(np.array([2, 1, 3, 3, 0]))
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111, 0]
    assert codes.dtype == np.uint32


def test_single_and_no_used_symbol_lengths() -> None:
    assert code_lengths(np.array([0, 0, 5, 0])).tolist() == [0, 0, 1, 0]
    assert code_lengths(np.array([0, 0])).tolist() == [0, 0]


def test_average_length_within_one_bit_of_entropy() -> None:
    rng = np.random.default_rng(3)
    for symbols in (np.minimum(rng.geometric(0.4, 50000) - 1, 99), rng.integers(0, 37, 50000)):
        h = entropy_bits(symbols, 100)
        avg = encoded_payload_bits(symbols, 100) / symbols.size
        assert h <= avg < h + 1


def test_entropy_known_values() -> None:
    assert entropy_bits(np.array([0, 1, 2, 3] * 5), 4) == pytest.approx(2.0)
    assert entropy_bits(np.array([2, 2, 2]), 4) == 0.0
    assert entropy_bits(np.zeros(0, dtype=int), 4) == 0.0


def test_length_limit_applied_and_still_valid() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    unlimited = _reference_cost(fib)
    for max_len in (6, 12, MAX_CODE_LEN):
        lengths = code_lengths(counts, max_len=max_len)
        assert int(lengths.max()) == max_len
        validate_lengths(lengths)
        kraft = sum(2.0 ** -int(x) for x in lengths)
        assert kraft == pytest.approx(1.0)  # the limited code stays complete
        assert int(np.sum(counts * lengths.astype(np.int64))) >= unlimited
        assert np.all(np.diff(lengths.astype(int)) <= 0)  # more frequent -> not longer
    with pytest.raises(ConfigError, match="cannot get codes"):
        code_lengths(counts, max_len=5)  # 40 symbols need at least 6 bits


def test_stream_round_trip_with_length_limiting() -> None:
    fib = [1, 1]
    while len(fib) < 27:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    symbols = np.random.default_rng(0).permutation(np.repeat(np.arange(counts.size), counts))
    assert _reference_cost(fib) < encoded_payload_bits(symbols, counts.size)  # limiting did kick in
    assert int(code_lengths(counts).max()) == MAX_CODE_LEN
    _assert_round_trip(symbols, counts.size)


def test_validate_lengths_rejects_bad_tables() -> None:
    validate_lengths(np.array([1, 2, 0, 0]))  # incomplete code is fine
    with pytest.raises(CorruptArtifactError, match="prefix-free"):
        validate_lengths(np.array([1, 1, 2]))
    with pytest.raises(CorruptArtifactError, match="outside"):
        validate_lengths(np.array([MAX_CODE_LEN + 1, 1]))


@pytest.mark.parametrize(
    ("symbols", "alphabet", "match"),
    [
        ([0, 5], 5, "outside the alphabet"),
        ([-1], 5, "outside the alphabet"),
        ([0], 0, "alphabet size"),
        ([0], 65537, "alphabet size"),
        ([0.5], 3, "integers"),
    ],
)
def test_encode_input_errors(symbols: list[float], alphabet: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        encode(np.array(symbols), alphabet)


def _valid_stream() -> bytes:
    return encode(np.array([0, 1, 1, 2, 2, 2, 2, 3, 0, 2, 2]), 5)


def test_every_truncation_is_corrupt() -> None:
    data = _valid_stream()
    for cut in range(len(data)):
        with pytest.raises(CorruptArtifactError):
            decode(data[:cut])


def _forge(
    mode: int, alphabet: int, count: int, nbits: int, entries: int, table: bytes, payload: bytes
) -> bytes:
    return HEADER.pack(1, mode, alphabet, count, nbits, entries) + table + payload


def test_crafted_malformed_streams() -> None:
    one_symbol_table = pack_bits(np.array([0]), 1) + pack_bits(np.array([1]), 5)  # sparse: symbol 0, length 1
    valid = _valid_stream()
    version, mode, alphabet, count, nbits, entries = HEADER.unpack(valid[:HEADER_NBYTES])
    count_off_by_one = HEADER.pack(version, mode, alphabet, count - 1, nbits, entries) + valid[HEADER_NBYTES:]
    cases = {
        "no code": _forge(1, 2, 1, 1, 1, one_symbol_table, b"\x80"),
        # incomplete 5-symbol code, short payload: the no-code marker must exceed any code length
        "no code ": _forge(0, 5, 11, 19, 5, b"-\xc20\x00", b"\xb6\x0f\x00"),
        "cannot hold": _forge(1, 2, 1 << 60, 8, 1, one_symbol_table, b"\x00"),
        "payload truncated": _forge(1, 2, 1, 1 << 62, 1, one_symbol_table, b"\x00"),
        "cannot hold ": _forge(1, 2, 2, 8, 1, one_symbol_table, b"\x00"),
        "declared": count_off_by_one,
        "prefix-free": _forge(0, 3, 1, 1, 3, pack_bits(np.array([1, 1, 1]), 5), b"\x00"),
        "padding": _forge(1, 2, 1, 1, 1, one_symbol_table, b"\x01"),
        "version": b"\x02" + valid[1:],
        "table mode": b"\x01\x07" + valid[2:],
        "not increasing": _forge(
            1, 4, 1, 1, 2, pack_bits(np.array([2, 1]), 2) + pack_bits(np.array([1, 1]), 5), b"\x00"
        ),
        "0 symbols": _forge(1, 2, 0, 3, 1, one_symbol_table, b"\x00"),
        "no codes": _forge(1, 2, 1, 1, 0, b"", b"\x00"),
        "dense table has": _forge(0, 3, 1, 1, 2, pack_bits(np.array([1, 1]), 5), b"\x00"),
    }
    assert decode(_forge(1, 2, 1, 1, 1, one_symbol_table, b"\x00"))[0].tolist() == [0]  # the forging is right
    for reason, data in cases.items():
        with pytest.raises(CorruptArtifactError, match=reason.strip()):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_corrupt(data: bytes) -> None:
    try:
        decode(data)
    except CorruptArtifactError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_stream_decodes_or_corrupt(data: st.DataObject) -> None:
    stream = bytearray(_valid_stream())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    try:
        out, used = decode(bytes(stream))
    except CorruptArtifactError:
        return
    assert used <= len(stream) and out.ndim == 1


def test_large_stream_round_trips() -> None:
    # Decode speed is measured in benchmarks/, never asserted in a unit test.
    rng = np.random.default_rng(1)
    symbols = np.minimum(rng.geometric(0.1, 300_000) - 1, 255)
    out, used = decode(encode(symbols, 256))
    np.testing.assert_array_equal(out, symbols)
