"""Adaptive binary range coding of small integer streams (quantized weight codes), with no code table.

Huffman coding needs a code-length table per stream (160 bytes for 8-bit codes), which costs more than
it saves on the few thousand codes of a small layer. This coder learns the distribution while coding:
each symbol ``s`` is coded relative to a center ``c`` (the zero point) as ``v = s - c`` in sign-magnitude
form: a zero flag; the sign (only when both signs are possible); the bucket ``b = floor(log2 |v|)`` in
truncated unary; the two bits under the leading one of ``|v|`` with adaptive contexts per bucket; the
remaining ``b - 2`` low bits at probability 1/2. Every adaptive decision starts at probability 1/2 and
follows the Laplace estimator ``(ones + 1) / (n + 2)`` up to ``MAX_COUNT`` events, then forgets
exponentially. All arithmetic is on integers, so encoder and decoder agree on every platform.

Stream layout (frozen; a change needs a new coding name in the artifact): the bytes of an LZMA-style
range coder (32-bit range, carry propagation through a cached byte) with its always-zero first byte and
its trailing zero bytes dropped; the decoder reads zeros past the end. The stream is not
self-delimiting: its length is the length of the blob that holds it.
"""

from __future__ import annotations

import numpy as np

from deepshrink.codec._checks import check_int
from deepshrink.core.errors import ConfigError, CorruptArtifactError

MAX_ALPHABET = 1 << 16
PROB_BITS = 16
_ONE = 1 << PROB_BITS
_MIN_P = 64  # probabilities stay in [_MIN_P, _ONE - _MIN_P]: every decision costs < 10 bits
MAX_COUNT = 1022
_TOP = 1 << 24
_MASK32 = 0xFFFFFFFF
_ZERO, _SIGN, _BUCKET = 0, 1, 2


class _Encoder:
    """The range encoder; ``bit`` codes one decision with adaptive context ``i``, ``raw`` one at 1/2."""

    __slots__ = ("low", "range", "cache", "pending", "out", "probs", "counts")

    def __init__(self, contexts: int) -> None:
        self.low, self.range, self.cache, self.pending = 0, _MASK32, 0, 1
        self.out = bytearray()
        self.probs = [_ONE >> 1] * contexts  # probability of a 0 bit, in units of 2^-16
        self.counts = [0] * contexts

    def _shift_low(self) -> None:
        low = self.low
        if (low & _MASK32) < 0xFF000000 or low > _MASK32:
            carry = low >> 32
            byte = self.cache
            while True:
                self.out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self.pending -= 1
                if not self.pending:
                    break
            self.cache = (low >> 24) & 0xFF
        self.pending += 1
        self.low = (low & 0x00FFFFFF) << 8

    def bit(self, i: int, bit: int) -> None:
        p = self.probs[i]
        n = self.counts[i]
        bound = (self.range >> PROB_BITS) * p
        if bit:
            self.low += bound
            self.range -= bound
            p -= p // (n + 2)
        else:
            self.range = bound
            p += (_ONE - p) // (n + 2)
        self.probs[i] = min(max(p, _MIN_P), _ONE - _MIN_P)
        if n < MAX_COUNT:
            self.counts[i] = n + 1
        while self.range < _TOP:
            self.range = (self.range << 8) & _MASK32
            self._shift_low()

    def raw(self, bit: int) -> None:
        self.range >>= 1
        if bit:
            self.low += self.range
        while self.range < _TOP:
            self.range = (self.range << 8) & _MASK32
            self._shift_low()

    def finish(self) -> bytes:
        for _ in range(5):
            self._shift_low()
        return bytes(self.out[1:]).rstrip(b"\x00")


class _Decoder:
    """Mirror of :class:`_Encoder`; bytes past the end of the stream read as zero."""

    __slots__ = ("data", "pos", "code", "range", "probs", "counts")

    def __init__(self, data: bytes, contexts: int) -> None:
        self.data, self.pos, self.code, self.range = data, 0, 0, _MASK32
        for _ in range(4):
            self.code = (self.code << 8) | self._byte()
        self.probs = [_ONE >> 1] * contexts
        self.counts = [0] * contexts

    def _byte(self) -> int:
        pos = self.pos
        self.pos = pos + 1
        return self.data[pos] if pos < len(self.data) else 0

    def bit(self, i: int) -> int:
        p = self.probs[i]
        n = self.counts[i]
        bound = (self.range >> PROB_BITS) * p
        if self.code < bound:
            self.range = bound
            p += (_ONE - p) // (n + 2)
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            p -= p // (n + 2)
            bit = 1
        self.probs[i] = min(max(p, _MIN_P), _ONE - _MIN_P)
        if n < MAX_COUNT:
            self.counts[i] = n + 1
        while self.range < _TOP:
            self.range = (self.range << 8) & _MASK32
            self.code = ((self.code << 8) | self._byte()) & _MASK32
        return bit

    def raw(self) -> int:
        self.range >>= 1
        bit = 0
        if self.code >= self.range:
            self.code -= self.range
            bit = 1
        while self.range < _TOP:
            self.range = (self.range << 8) & _MASK32
            self.code = ((self.code << 8) | self._byte()) & _MASK32
        return bit


def _layout(alphabet: int) -> tuple[int, int, int]:
    """(first most-significant-bit context, first second-bit context, context count) for an alphabet."""
    nb = max(1, (alphabet - 1).bit_length())  # buckets 0..nb-1 cover every magnitude below the alphabet
    msb = _BUCKET + nb
    sec = msb + nb
    return msb, sec, sec + 2 * nb


def _centers(center: int | np.ndarray, count: int, alphabet: int) -> list[int]:
    """One validated center per symbol (a scalar is broadcast); ConfigError for bad values."""
    arr = np.asarray(center)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"arith centers must be integers, got dtype {arr.dtype}")
    arr = np.broadcast_to(arr.astype(np.int64), (count,)) if arr.ndim == 0 else arr.astype(np.int64).ravel()
    if arr.size != count:
        raise ConfigError(f"arith needs one center per symbol or one for all, got {arr.size} for {count}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= alphabet):
        raise ConfigError(f"arith centers must lie in 0..{alphabet - 1}")
    return arr.tolist()


def encode(symbols: np.ndarray, alphabet: int, center: int | np.ndarray = 0) -> bytes:
    """Code ``symbols`` (integers in ``0..alphabet-1``) around ``center`` (one int, or one per symbol)."""
    alphabet = check_int(alphabet, "alphabet size", 1, MAX_ALPHABET)
    sym = np.asarray(symbols)
    if sym.size and sym.dtype.kind not in "iu":
        raise ConfigError(f"arith symbols must be integers, got dtype {sym.dtype}")
    sym = sym.astype(np.int64).ravel()
    if sym.size and (int(sym.min()) < 0 or int(sym.max()) >= alphabet):
        raise ConfigError(f"arith symbols must lie in 0..{alphabet - 1}")
    centers = _centers(center, sym.size, alphabet)
    msb, sec, contexts = _layout(alphabet)
    enc = _Encoder(contexts)
    top = alphabet - 1
    for s, c in zip(sym.tolist(), centers):
        v = s - c
        up, down = top - c, c  # largest magnitude on each side of the center
        if not up and not down:
            continue  # a one-symbol alphabet: nothing to code
        enc.bit(_ZERO, v != 0)
        if not v:
            continue
        neg = v < 0
        if up and down:
            enc.bit(_SIGN, neg)
        a = -v if neg else v
        b = a.bit_length() - 1
        for j in range((down if neg else up).bit_length() - 1):
            enc.bit(_BUCKET + j, b > j)
            if b == j:
                break
        if b >= 1:
            first = (a >> (b - 1)) & 1
            enc.bit(msb + b, first)
            if b >= 2:
                enc.bit(sec + 2 * b + first, (a >> (b - 2)) & 1)
                for k in range(b - 3, -1, -1):
                    enc.raw((a >> k) & 1)
    return enc.finish()


def decode(data: bytes, alphabet: int, count: int, center: int | np.ndarray = 0) -> np.ndarray:
    """Inverse of :func:`encode`: ``count`` symbols (int64); impossible values are CorruptArtifactError."""
    alphabet = check_int(alphabet, "alphabet size", 1, MAX_ALPHABET)
    count = check_int(count, "symbol count", 0)
    centers = _centers(center, count, alphabet)
    msb, sec, contexts = _layout(alphabet)
    dec = _Decoder(bytes(data), contexts)
    top = alphabet - 1
    out = np.empty(count, dtype=np.int64)
    for idx, c in enumerate(centers):
        up, down = top - c, c
        if (not up and not down) or not dec.bit(_ZERO):
            out[idx] = c
            continue
        neg = dec.bit(_SIGN) if up and down else int(not up)
        limit = down if neg else up
        b = 0
        while b < limit.bit_length() - 1 and dec.bit(_BUCKET + b):
            b += 1
        a = 1 << b
        if b >= 1:
            first = dec.bit(msb + b)
            a |= first << (b - 1)
            if b >= 2:
                a |= dec.bit(sec + 2 * b + first) << (b - 2)
                for k in range(b - 3, -1, -1):
                    a |= dec.raw() << k
        if a > limit:
            raise CorruptArtifactError(f"arith stream decodes a magnitude {a} past the alphabet of {alphabet}")
        out[idx] = c - a if neg else c + a
    if dec.pos < len(dec.data) or dec.code >= dec.range:
        raise CorruptArtifactError("arith stream does not end where its symbols do (corrupt or padded)")
    return out
