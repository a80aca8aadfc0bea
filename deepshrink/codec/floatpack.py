"""Lossless bit-field packing of float32 arrays: only the sign, exponent and mantissa bits that vary.

Small float tensors (per-channel scales, biases) are mostly positive, share a few exponents, and may
come from a lower precision (a float16-rounded scale has 13 trailing zero mantissa bits). Each value is
stored as ``[sign] (exponent - e0) mantissa >> t`` at a fixed width: the sign only when signs differ,
the exponent offset at the bits its range needs, and the mantissa without the trailing zero bits that
every value shares. The round trip is bit-exact for every float32 (zeros, subnormals, inf, NaN).

Layout (frozen): u8 ``sign mode (0 all +, 1 all -, 2 mixed) | exponent bits << 2`` | u8 ``e0`` |
u8 mantissa bits | the fields, MSB-first, last byte zero-padded. An empty array is zero bytes.
"""

from __future__ import annotations

import numpy as np

from deepshrink.codec._checks import check_int
from deepshrink.core.errors import ConfigError, CorruptArtifactError

HEADER_NBYTES = 3
_CHUNK = 1 << 16  # values per packing step (a multiple of 8, so every chunk but the last fills whole bytes)


def _pack(fields: np.ndarray, width: int) -> bytes:
    """``fields`` (uint64, each < 2**width) at ``width`` bits each, MSB-first (width 0 gives no bytes)."""
    if not width:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    out = []
    for start in range(0, fields.size, _CHUNK):  # bounded temporaries: 8 bytes per bit of one chunk
        bits = ((fields[start:start + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out.append(np.packbits(bits.ravel()).tobytes())
    return b"".join(out)


def _unpack(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack`: ``count`` uint64 fields of ``width`` bits (the caller checked the length)."""
    out = np.zeros(count, dtype=np.uint64)
    if not width:
        return out
    weights = np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)
    raw = np.frombuffer(data, dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = start * width // 8  # whole bytes: start is a multiple of 8
        bits = np.unpackbits(raw[first:first + (n * width + 7) // 8], count=n * width).reshape(n, width)
        out[start:start + n] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def encode(values: np.ndarray) -> bytes:
    """Pack float32 ``values`` (any shape; flattened) losslessly; see the module docstring."""
    arr = np.asarray(values)
    if arr.dtype != np.float32:
        raise ConfigError(f"floatpack stores float32 values, got dtype {arr.dtype}")
    if not arr.size:
        return b""
    u = np.ascontiguousarray(arr).ravel().view(np.uint32).astype(np.uint64)
    sign = u >> np.uint64(31)
    expo = (u >> np.uint64(23)) & np.uint64(0xFF)
    mant = u & np.uint64(0x7FFFFF)
    mode = int(sign[0]) if bool((sign == sign[0]).all()) else 2
    e0 = int(expo.min())
    ebits = int(expo.max() - np.uint64(e0)).bit_length()
    nonzero = mant[mant != 0]
    trailing = 23 if not nonzero.size else int(np.min(nonzero & (~nonzero + np.uint64(1)))).bit_length() - 1
    mbits = 23 - trailing
    fields = ((expo - np.uint64(e0)) << np.uint64(mbits)) | (mant >> np.uint64(trailing))
    width = ebits + mbits
    if mode == 2:
        fields |= sign << np.uint64(width)
        width += 1
    return bytes([mode | ebits << 2, e0, mbits]) + _pack(fields, width)


def nbytes(count: int, data: bytes) -> int:
    """Bytes a stream of ``count`` values with this header occupies (for validation and slicing)."""
    count = check_int(count, "value count", 0)
    if not count:
        return 0
    if len(data) < HEADER_NBYTES:
        raise CorruptArtifactError(f"floatpack stream of {len(data)} bytes is shorter than its header")
    mode, ebits, mbits = data[0] & 3, data[0] >> 2, data[2]
    if mode > 2 or ebits > 8 or mbits > 23:
        raise CorruptArtifactError(f"floatpack header is invalid (mode {mode}, {ebits}/{mbits} bits)")
    return HEADER_NBYTES + (count * (ebits + mbits + (mode == 2)) + 7) // 8


def decode(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``count`` float32 values; a wrong length is CorruptArtifactError."""
    need = nbytes(count, data)
    if len(data) != need:
        raise CorruptArtifactError(f"floatpack stream is {len(data)} bytes, {count} values need {need}")
    if not count:
        return np.zeros(0, dtype=np.float32)
    mode, ebits, e0, mbits = data[0] & 3, data[0] >> 2, data[1], data[2]
    width = ebits + mbits + (mode == 2)
    fields = _unpack(data[HEADER_NBYTES:], width, count)
    mant = (fields & np.uint64((1 << mbits) - 1)) << np.uint64(23 - mbits)
    expo = ((fields >> np.uint64(mbits)) & np.uint64((1 << ebits) - 1)) + np.uint64(e0)
    if int(expo.max()) > 0xFF:
        raise CorruptArtifactError(f"floatpack exponent {int(expo.max())} is past 255")
    sign = (fields >> np.uint64(ebits + mbits)) & np.uint64(1) if mode == 2 else np.full(count, mode, np.uint64)
    u = (sign << np.uint64(31)) | (expo << np.uint64(23)) | mant
    return u.astype(np.uint32).view(np.float32)
