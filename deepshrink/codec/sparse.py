"""Deep Compression relative (difference) indices for the non-zero positions of a flattened array.

With index width ``b`` and ``ESC = 2**b - 1``, a symbol ``s`` in ``0..ESC-1`` means "the next stored
non-zero is ``s + 1`` positions after the cursor" (the cursor starts at -1 and moves there), and
``ESC`` is a filler: "advance the cursor by ``ESC`` positions, no weight stored".  Fillers carry no
weight, so the value stream has exactly one entry per real non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deepshrink.codec.huffman import encoded_payload_bits
from deepshrink.codec._checks import check_int
from deepshrink.core.errors import ConfigError, CorruptArtifactError

MAX_INDEX_BITS = 16


def _check_bits(bits: int) -> int:
    return check_int(bits, "index width", 1, MAX_INDEX_BITS)


def _check_length(length: int) -> int:
    return check_int(length, "array length", 0)


def _gaps(positions: np.ndarray, length: int) -> np.ndarray:
    """Cursor advances (>= 1) between consecutive non-zeros, checking positions are valid (ConfigError)."""
    pos = np.asarray(positions)
    if pos.ndim != 1:
        raise ConfigError(f"positions must be a 1-D array, got shape {pos.shape}")
    if pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    if pos.dtype.kind not in "iu":
        raise ConfigError(f"positions must be integers, got dtype {pos.dtype}")
    if pos.dtype.kind == "u" and int(pos.max()) > np.iinfo(np.int64).max:
        raise ConfigError("positions exceed the int64 range")
    pos = pos.astype(np.int64)
    gaps = np.diff(pos, prepend=-1)
    if int(pos[0]) < 0:
        raise ConfigError(f"position {int(pos[0])} is negative")
    if int(gaps.min()) < 1:
        raise ConfigError("positions must be strictly increasing")
    if int(pos[-1]) >= length:
        raise ConfigError(f"position {int(pos[-1])} is outside an array of length {length}")
    return gaps


def encode_positions(positions: np.ndarray, length: int, bits: int) -> np.ndarray:
    """Relative-index symbols (uint16) for sorted non-zero ``positions`` of an array of ``length``."""
    bits = _check_bits(bits)
    gaps = _gaps(positions, _check_length(length))
    esc = (1 << bits) - 1
    fillers = (gaps - 1) // esc
    total = gaps.size + int(fillers.sum())
    out = np.full(total, esc, dtype=np.uint16)
    real = np.cumsum(fillers + 1) - 1
    out[real] = gaps - fillers * esc - 1
    return out


def decode_positions(symbols: np.ndarray, length: int, bits: int) -> np.ndarray:
    """Positions (int64) of the stored non-zeros described by relative-index ``symbols``."""
    bits = _check_bits(bits)
    length = _check_length(length)
    sym = np.asarray(symbols)
    if sym.ndim != 1 or (sym.size and sym.dtype.kind not in "iu"):
        raise CorruptArtifactError("relative index symbols must be a 1-D integer array")
    if sym.size == 0:
        return np.zeros(0, dtype=np.int64)
    esc = (1 << bits) - 1
    if int(sym.min()) < 0 or int(sym.max()) > esc:
        raise CorruptArtifactError(f"relative index symbol outside 0..{esc} for {bits}-bit indices")
    sym = sym.astype(np.int64)
    is_filler = sym == esc
    if is_filler[-1]:
        raise CorruptArtifactError("relative index stream ends with a filler")
    cursor = np.cumsum(np.where(is_filler, esc, sym + 1))
    positions = cursor[~is_filler] - 1
    if int(positions[-1]) >= length:
        raise CorruptArtifactError(
            f"relative indices reach position {int(positions[-1])}, array length is {length}"
        )
    return positions


def count_fillers(symbols: np.ndarray, bits: int) -> int:
    """Number of filler (ESC) symbols in a relative-index stream of width ``bits``."""
    esc = (1 << _check_bits(bits)) - 1
    return int(np.count_nonzero(np.asarray(symbols) == esc))


def index_stream_bits(positions: np.ndarray, length: int, bits: int, huffman: bool = False) -> int:
    """Bits spent on the index stream: ``len(symbols) * bits``, or its Huffman payload bits."""
    bits = _check_bits(bits)
    if huffman:
        return encoded_payload_bits(encode_positions(positions, length, bits), 1 << bits)
    gaps = _gaps(positions, _check_length(length))
    return (gaps.size + int(((gaps - 1) // ((1 << bits) - 1)).sum())) * bits


def best_index_bits(
    positions: np.ndarray, length: int, candidates: Iterable[int] = range(1, 17), huffman: bool = False
) -> int:
    """Index width minimising the index stream size (packed, or Huffman payload); ties go to the smaller."""
    widths = sorted({_check_bits(b) for b in candidates})
    if not widths:
        raise ConfigError("best_index_bits needs at least one candidate width")
    gaps = _gaps(positions, _check_length(length))
    best, best_cost = widths[0], None
    for b in widths:
        if huffman:
            cost = index_stream_bits(positions, length, b, huffman=True)
        else:
            cost = (gaps.size + int(((gaps - 1) // ((1 << b) - 1)).sum())) * b
        if best_cost is None or cost < best_cost:
            best, best_cost = b, cost
    return best
