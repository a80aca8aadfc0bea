"""Fixed-width bit packing: unsigned integers at ``bits`` bits each, MSB-first, vectorised with numpy."""

from __future__ import annotations

import numpy as np

from deepshrink.codec._checks import check_int
from deepshrink.core.errors import ConfigError, CorruptArtifactError

MAX_PACK_BITS = 16


def _check_bits(bits: int) -> int:
    return check_int(bits, "bit width", 1, MAX_PACK_BITS)


def _check_count(count: int) -> int:
    return check_int(count, "value count", 0)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed to hold ``count`` values at ``bits`` bits each (last byte zero-padded)."""
    return (_check_count(count) * _check_bits(bits) + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ints (each < 2**bits) at ``bits`` bits each, MSB-first, last byte zero-padded."""
    bits = _check_bits(bits)
    arr = np.asarray(values)
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"pack_bits needs integer values, got dtype {arr.dtype}")
    arr = arr.ravel()
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= (1 << bits):
        bad = lo if lo < 0 else hi
        raise ConfigError(f"value {bad} does not fit in {bits} unsigned bits (range 0..{(1 << bits) - 1})")
    if bits == 8:
        return arr.astype(np.uint8).tobytes()
    if bits == 16:
        return arr.astype(">u2").tobytes()
    if bits < 8:
        matrix = np.unpackbits(arr.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
    else:
        as_bytes = arr.astype(">u2").view(np.uint8).reshape(-1, 2)
        matrix = np.unpackbits(as_bytes, axis=1)[:, 16 - bits :]
    return np.packbits(matrix.ravel()).tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values (uint8 up to 8 bits, else uint16)."""
    bits = _check_bits(bits)
    count = _check_count(count)
    need = (count * bits + 7) // 8
    if len(data) < need:
        raise CorruptArtifactError(
            f"packed data too short: {count} values at {bits} bits need {need} bytes, got {len(data)}"
        )
    out_dtype = np.uint8 if bits <= 8 else np.uint16
    if count == 0:
        return np.zeros(0, dtype=out_dtype)
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 8:
        return raw.copy()
    if bits == 16:
        return raw.view(">u2").astype(np.uint16)
    matrix = np.unpackbits(raw, count=count * bits).reshape(count, bits)
    width = 8 if bits <= 8 else 16
    padded = np.zeros((count, width), dtype=np.uint8)
    padded[:, width - bits :] = matrix
    packed = np.packbits(padded, axis=1)
    if width == 8:
        return packed.reshape(count)
    return packed.view(">u2").reshape(count).astype(np.uint16)
