"""Canonical, length-limited Huffman coding of symbol streams from an alphabet 0..A-1 (A <= 65536).

Stream layout (little-endian), produced by :func:`encode` and read by :func:`decode`:

    u8 version (=1) | u8 table mode (0 dense, 1 sparse) | u32 alphabet size | u64 symbol count |
    u64 payload bit count | u32 table entries | code-length table | payload (MSB-first, zero-padded)

Dense table: ``A`` code lengths at 5 bits each (``entries == A``).  Sparse table: ``entries`` used
symbols in increasing order at ``max(1, bit_length(A-1))`` bits each, then their lengths (1..24) at
5 bits each.  The encoder picks whichever is smaller.  Streams are self-delimiting so they can be
concatenated: :func:`decode` returns the number of bytes it consumed.
"""

from __future__ import annotations

import struct

import numpy as np

from deepshrink.codec.packing import pack_bits, packed_nbytes, unpack_bits
from deepshrink.core.errors import ConfigError, CorruptArtifactError

MAX_CODE_LEN = 24
MAX_ALPHABET = 65536
STREAM_VERSION = 1
_HEADER = struct.Struct("<BBIQQI")
HEADER_NBYTES = _HEADER.size  # 26
_LEN_BITS = 5
_ENCODE_CHUNK = 1 << 18  # symbols per encoding chunk (bounds temporary memory)
_DECODE_CHUNK = 1 << 17  # payload bytes per decoding chunk
_LUT_MAX_BITS = 16  # decode through a 2**width step table when codes are at most this long


def _as_int_array(values: np.ndarray, what: str) -> np.ndarray:
    """Return ``values`` as a flat int64 array, or raise ConfigError for non-integer input."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise ConfigError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ConfigError(f"{what} exceed the int64 range")
    return arr.astype(np.int64).ravel()


def _check_alphabet(alphabet_size: int) -> int:
    """Return the alphabet size as an int, or raise ConfigError when it is outside 1..65536."""
    if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)):
        raise ConfigError(f"alphabet size must be an integer, got {alphabet_size!r}")
    if not 1 <= int(alphabet_size) <= MAX_ALPHABET:
        raise ConfigError(f"alphabet size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
    return int(alphabet_size)


def _check_symbols(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Flat int64 symbols, each checked to lie in 0..alphabet_size-1 (ConfigError otherwise)."""
    sym = _as_int_array(symbols, "symbols")
    if sym.size:
        lo, hi = int(sym.min()), int(sym.max())
        if lo < 0 or hi >= alphabet_size:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"symbol {bad} is outside the alphabet 0..{alphabet_size - 1}")
    return sym


def _huffman_depths(weights: list[int]) -> list[int]:
    """Leaf depths of a Huffman tree over ``weights`` sorted ascending (two-queue method, O(n))."""
    n = len(weights)
    inner: list[int] = []
    parent = [0] * (2 * n - 1)  # node ids: leaves 0..n-1, internal nodes n..2n-2 in creation order
    li = ii = 0
    for k in range(n - 1):
        picked = 0
        for _ in range(2):
            if li < n and (ii >= k or weights[li] <= inner[ii]):
                picked += weights[li]
                parent[li] = n + k
                li += 1
            else:
                picked += inner[ii]
                parent[n + ii] = n + k
                ii += 1
        inner.append(picked)
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):  # parents always have larger ids than their children
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def code_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal Huffman code lengths per symbol, limited to ``max_len`` bits; unused symbols get 0.

    Lengths deeper than ``max_len`` are folded back with the JPEG (Annex K) rebalancing, which keeps
    the code complete; lengths are then re-dealt shortest-first to the most frequent symbols.
    """
    cnt = _as_int_array(counts, "counts")
    if cnt.size > MAX_ALPHABET:
        raise ConfigError(f"alphabet of {cnt.size} symbols exceeds the maximum {MAX_ALPHABET}")
    if cnt.size and int(cnt.min()) < 0:
        raise ConfigError("symbol counts must be non-negative")
    if (
        isinstance(max_len, bool)
        or not isinstance(max_len, (int, np.integer))
        or not 1 <= max_len <= MAX_CODE_LEN
    ):
        raise ConfigError(f"max_len must be an integer in 1..{MAX_CODE_LEN}, got {max_len!r}")
    lengths = np.zeros(cnt.size, dtype=np.uint8)
    used = np.flatnonzero(cnt)
    n = used.size
    if n > (1 << int(max_len)):
        raise ConfigError(f"{n} used symbols cannot get codes of at most {max_len} bits")
    if n <= 1:
        lengths[used] = 1
        return lengths
    ascending = used[np.lexsort((used, cnt[used]))]
    depths = _huffman_depths(cnt[ascending].tolist())
    hist = [0] * (max(depths) + 1)
    for d in depths:
        hist[d] += 1
    for i in range(len(hist) - 1, int(max_len), -1):
        while hist[i] > 0:
            j = i - 2
            while j > 0 and hist[j] == 0:
                j -= 1
            if j < 1:  # impossible for n <= 2**max_len; kept as a guard against silent garbage
                raise ConfigError(f"cannot limit code lengths to {max_len} bits")
            hist[i] -= 2
            hist[i - 1] += 1
            hist[j + 1] += 2
            hist[j] -= 1
    dealt = np.repeat(np.arange(len(hist), dtype=np.uint8), hist)
    lengths[used[np.lexsort((used, -cnt[used]))]] = dealt
    return lengths


def validate_lengths(lengths: np.ndarray) -> None:
    """Raise CorruptArtifactError unless ``lengths`` (0 = unused) form a prefix-free code (Kraft sum <= 1)."""
    arr = np.asarray(lengths)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise CorruptArtifactError("Huffman code lengths must be a 1-D integer array")
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > MAX_CODE_LEN:
        raise CorruptArtifactError(
            f"Huffman code length {hi if hi > MAX_CODE_LEN else lo} outside 0..{MAX_CODE_LEN}"
        )
    used = arr[arr > 0].astype(np.int64)
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LEN - used, dtype=np.int64)))
    if kraft > (1 << MAX_CODE_LEN):
        raise CorruptArtifactError(
            f"Huffman code lengths are not prefix-free (Kraft sum {kraft / (1 << MAX_CODE_LEN):.4f} > 1)"
        )


class _Canon:
    """Canonical code tables derived from validated lengths: sorted symbols and per-length ranges."""

    def __init__(self, lengths: np.ndarray) -> None:
        lens = np.asarray(lengths).astype(np.int64)
        used = np.flatnonzero(lens)
        order = np.lexsort((used, lens[used]))
        self.symbols = used[order]
        self.sym_lens = lens[self.symbols]
        bl = np.bincount(self.sym_lens, minlength=MAX_CODE_LEN + 1).astype(np.int64)
        bl[0] = 0
        self.max_len = int(self.sym_lens.max()) if used.size else 0
        first = np.zeros(MAX_CODE_LEN + 1, dtype=np.int64)
        code = 0
        for length in range(1, MAX_CODE_LEN + 1):
            code = (code + int(bl[length - 1])) << 1
            first[length] = code
        self.first = first
        self.start = np.concatenate(([0], np.cumsum(bl)[:-1])).astype(
            np.int64
        )  # index of first code per length
        self.counts = bl

    def codes(self, alphabet_size: int) -> np.ndarray:
        """Code value per symbol (0 for unused symbols)."""
        out = np.zeros(alphabet_size, dtype=np.uint32)
        rank = np.arange(self.symbols.size, dtype=np.int64) - self.start[self.sym_lens]
        out[self.symbols] = (self.first[self.sym_lens] + rank).astype(np.uint32)
        return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (uint32) for ``lengths``: codes ascend in (length, symbol) order."""
    validate_lengths(lengths)
    arr = np.asarray(lengths)
    return _Canon(arr).codes(arr.size)


def entropy_bits(symbols: np.ndarray, alphabet_size: int) -> float:
    """Empirical (order-0) entropy of the stream in bits per symbol; 0.0 for an empty stream."""
    sym = _check_symbols(symbols, _check_alphabet(alphabet_size))
    if sym.size == 0:
        return 0.0
    counts = np.bincount(sym, minlength=alphabet_size)
    p = counts[counts > 0] / sym.size
    return float(-np.sum(p * np.log2(p))) + 0.0  # + 0.0 turns -0.0 into 0.0


def encoded_payload_bits(symbols: np.ndarray, alphabet_size: int) -> int:
    """Payload bits :func:`encode` would spend on ``symbols`` (excluding header and length table)."""
    sym = _check_symbols(symbols, _check_alphabet(alphabet_size))
    counts = np.bincount(sym, minlength=alphabet_size)
    return int(np.sum(counts * code_lengths(counts).astype(np.int64)))


def _encode_table(lengths: np.ndarray, alphabet_size: int) -> tuple[int, int, bytes]:
    """(mode, entries, bytes) of the smaller of the dense and sparse code-length tables."""
    used = np.flatnonzero(lengths)
    sym_bits = max(1, (alphabet_size - 1).bit_length())
    dense_n = packed_nbytes(alphabet_size, _LEN_BITS)
    sparse_n = packed_nbytes(used.size, sym_bits) + packed_nbytes(used.size, _LEN_BITS)
    if sparse_n < dense_n:
        return 1, int(used.size), pack_bits(used, sym_bits) + pack_bits(lengths[used], _LEN_BITS)
    return 0, alphabet_size, pack_bits(lengths, _LEN_BITS)


def _encode_payload(sym: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> tuple[bytes, int]:
    """Concatenate the codes of ``sym`` MSB-first; returns (bytes, number of payload bits)."""
    pieces: list[bytes] = []
    carry = np.zeros(0, dtype=np.uint8)
    total = 0
    width = int(lengths.max()) if lengths.size else 0
    columns = np.arange(width)
    for a in range(0, sym.size, _ENCODE_CHUNK):
        chunk = sym[a : a + _ENCODE_CHUNK]
        lens = lengths[chunk].astype(np.int64)
        aligned = codes[chunk].astype(np.uint64) << (32 - lens).astype(np.uint64)  # left-align in 32 bits
        matrix = np.unpackbits(aligned.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)[:, :width]
        bits = np.concatenate((carry, matrix[columns[None, :] < lens[:, None]]))
        total += int(lens.sum())
        whole = bits.size // 8 * 8
        pieces.append(np.packbits(bits[:whole]).tobytes())
        carry = bits[whole:]
    pieces.append(np.packbits(carry).tobytes())
    return b"".join(pieces), total


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Huffman-code ``symbols`` (ints in 0..alphabet_size-1) into a self-describing byte stream."""
    alphabet_size = _check_alphabet(alphabet_size)
    sym = _check_symbols(symbols, alphabet_size)
    counts = np.bincount(sym, minlength=alphabet_size)
    lengths = code_lengths(counts)
    mode, entries, table = _encode_table(lengths, alphabet_size)
    payload, nbits = _encode_payload(sym, lengths, _Canon(lengths).codes(alphabet_size))
    header = _HEADER.pack(STREAM_VERSION, mode, alphabet_size, sym.size, nbits, entries)
    return header + table + payload


def _read_table(raw: np.ndarray, mode: int, alphabet_size: int, entries: int) -> tuple[np.ndarray, int]:
    """Parse the code-length table after the header; returns (lengths per symbol, table bytes)."""
    avail = raw.size - HEADER_NBYTES
    if mode == 0:
        if entries != alphabet_size:
            raise CorruptArtifactError(
                f"Huffman dense table has {entries} entries for an alphabet of {alphabet_size}"
            )
        nbytes = packed_nbytes(entries, _LEN_BITS)
        if avail < nbytes:
            raise CorruptArtifactError("Huffman stream truncated inside its code-length table")
        lengths = unpack_bits(raw[HEADER_NBYTES : HEADER_NBYTES + nbytes].tobytes(), _LEN_BITS, entries)
        return lengths, nbytes
    if entries > alphabet_size:
        raise CorruptArtifactError(
            f"Huffman sparse table has {entries} entries for an alphabet of {alphabet_size}"
        )
    sym_bits = max(1, (alphabet_size - 1).bit_length())
    nsym, nlen = packed_nbytes(entries, sym_bits), packed_nbytes(entries, _LEN_BITS)
    if avail < nsym + nlen:
        raise CorruptArtifactError("Huffman stream truncated inside its code-length table")
    start = HEADER_NBYTES
    used = unpack_bits(raw[start : start + nsym].tobytes(), sym_bits, entries).astype(np.int64)
    lens = unpack_bits(raw[start + nsym : start + nsym + nlen].tobytes(), _LEN_BITS, entries)
    if entries and (int(used.max()) >= alphabet_size or np.any(np.diff(used) <= 0)):
        raise CorruptArtifactError("Huffman sparse table symbols are not increasing within the alphabet")
    if entries and int(lens.min()) == 0:
        raise CorruptArtifactError("Huffman sparse table lists a symbol with code length 0")
    lengths = np.zeros(alphabet_size, dtype=np.uint8)
    lengths[used] = lens
    return lengths, nsym + nlen


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode one stream from the start of ``data``; returns (symbols as int64, bytes consumed).

    Any malformed input raises CorruptArtifactError; sizes are checked against ``len(data)`` before
    anything proportional to the declared counts is allocated.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < HEADER_NBYTES:
        raise CorruptArtifactError(
            f"Huffman stream truncated: {raw.size} bytes, header needs {HEADER_NBYTES}"
        )
    version, mode, alphabet_size, count, nbits, entries = _HEADER.unpack(raw[:HEADER_NBYTES].tobytes())
    if version != STREAM_VERSION:
        raise CorruptArtifactError(f"unknown Huffman stream version {version} (expected {STREAM_VERSION})")
    if mode not in (0, 1):
        raise CorruptArtifactError(f"unknown Huffman table mode {mode}")
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise CorruptArtifactError(f"Huffman alphabet size {alphabet_size} outside 1..{MAX_ALPHABET}")
    lengths, table_nbytes = _read_table(raw, mode, alphabet_size, entries)
    validate_lengths(lengths)
    start = HEADER_NBYTES + table_nbytes
    payload_nbytes = (nbits + 7) // 8
    consumed = start + payload_nbytes
    if consumed > raw.size:
        raise CorruptArtifactError(
            f"Huffman payload truncated: needs {payload_nbytes} bytes, {raw.size - start} left"
        )
    canon = _Canon(lengths)
    if count == 0:
        if nbits:
            raise CorruptArtifactError(f"Huffman stream has 0 symbols but {nbits} payload bits")
        return np.zeros(0, dtype=np.int64), consumed
    if canon.max_len == 0:
        raise CorruptArtifactError(f"Huffman stream has {count} symbols but no codes")
    if not count * int(canon.sym_lens.min()) <= nbits <= count * canon.max_len:
        raise CorruptArtifactError(f"Huffman payload of {nbits} bits cannot hold {count} symbols")
    payload = raw[start:consumed]
    if nbits % 8 and int(payload[-1]) & ((1 << (8 - nbits % 8)) - 1):
        raise CorruptArtifactError("Huffman payload padding bits are not zero")
    padded = np.concatenate((payload, np.zeros(3, dtype=np.uint8)))
    width = canon.max_len
    lens_range = np.arange(1, width + 1, dtype=np.int64)
    limits = (canon.first[1 : width + 1] + canon.counts[1 : width + 1]) << (width - lens_range)
    invalid = nbits + width + 1  # step for bits matching no code: longer than any code, jumps past the end
    lut = None
    if width <= _LUT_MAX_BITS and (1 << width) <= max(4096, nbits):  # step per window value, when worth it
        k = np.searchsorted(limits, np.arange(1 << width, dtype=np.int64), side="right")
        lut = np.where(k < width, k + 1, invalid).astype(np.int64)
    shifts = np.arange(8, dtype=np.int64)
    found: list[np.ndarray] = []
    nfound = 0
    p = 0
    for ja in range(0, payload_nbytes, _DECODE_CHUNK):
        jb = min(ja + _DECODE_CHUNK, payload_nbytes)
        base, m = 8 * ja, min(8 * jb, nbits) - 8 * ja
        if p - base >= m:
            continue
        seg = padded[ja : jb + 3].astype(np.int64)
        words = (seg[:-3] << 24) | (seg[1:-2] << 16) | (seg[2:-1] << 8) | seg[3:]  # 32 bits from each byte
        win = (((words[:, None] << shifts) & 0xFFFFFFFF) >> (32 - width)).ravel()  # window at each bit
        if lut is not None:
            step = lut[win]
        else:
            k = np.searchsorted(limits, win, side="right")
            step = np.where(k < width, k + 1, invalid)
        step += np.arange(step.size, dtype=np.int64)  # step[q] is now the start of the next code
        nxt = memoryview(step)
        rel: list[int] = []
        ap = rel.append
        q = p - base
        while q < m:
            ap(q)
            q = nxt[q]
        p = base + q
        nfound += len(rel)
        if nfound > count:
            raise CorruptArtifactError(f"Huffman payload holds more than the declared {count} symbols")
        at = np.asarray(rel, dtype=np.int64)
        lens = step[at] - at
        if at.size and int(lens.max()) > width:
            raise CorruptArtifactError("Huffman payload contains bits that decode to no code")
        codes = win[at] >> (width - lens)
        found.append(canon.symbols[canon.start[lens] + codes - canon.first[lens]])
    if p != nbits:
        raise CorruptArtifactError(f"Huffman payload codes end at bit {p}, header declares {nbits} bits")
    if nfound != count:
        raise CorruptArtifactError(f"Huffman payload holds {nfound} symbols, header declares {count}")
    return np.concatenate(found), consumed
