"""Tensor encodings of the artifact: dense, sparse (relative indices), codebook (shared weights) and
fpack (float32 with only the sign/exponent/mantissa bits that vary, ``codec.floatpack``; lossless).

Each encoder returns JSON-able metadata, the blobs it needs, and the exact byte cost of each
stream so reports can break a file down without estimating anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from deepshrink.codec import floatpack, huffman, packing, sparse
from deepshrink.core.errors import ConfigError, CorruptArtifactError

Coding = Literal["packed", "huffman", "auto"]

DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "float64": (torch.float64, np.dtype("<f8")),
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("?")),
}
TORCH_TO_NAME = {t: name for name, (t, _) in DTYPES.items()}


@dataclass
class StreamStats:
    """One coded stream: symbols, alphabet, chosen coding, bytes, and its entropy for reports."""

    symbols: int
    alphabet: int
    coding: str
    nbytes: int
    entropy_bits: float
    packed_bits: int

    @property
    def bits_per_symbol(self) -> float:
        return 8.0 * self.nbytes / self.symbols if self.symbols else 0.0


@dataclass
class Encoded:
    """The result of encoding one tensor."""

    meta: dict[str, Any]
    blobs: dict[str, bytes]
    streams: dict[str, StreamStats] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs.values())


def bits_for(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(max(2, alphabet))))


def encode_stream(symbols: np.ndarray, alphabet: int, coding: Coding) -> tuple[bytes, StreamStats]:
    """Code a symbol stream packed at fixed width or Huffman-coded; ``auto`` keeps the smaller."""
    width = bits_for(alphabet)
    packed = packing.pack_bits(symbols, width)
    options: dict[str, bytes] = {}
    if coding in ("packed", "auto"):
        options["packed"] = packed
    if coding in ("huffman", "auto"):
        options["huffman"] = huffman.encode(symbols, alphabet)
    if not options:
        raise ConfigError(f"stream coding must be packed, huffman or auto, got {coding!r}")
    chosen = min(options, key=lambda k: (len(options[k]), k != "packed"))
    data = options[chosen]
    stats = StreamStats(int(symbols.size), alphabet, chosen, len(data),
                        huffman.entropy_bits(symbols, alphabet) if symbols.size else 0.0, width * int(symbols.size))
    return data, stats


def decode_stream(data: bytes, coding: str, alphabet: int, count: int, where: str) -> np.ndarray:
    if coding == "packed":
        out = packing.unpack_bits(data, bits_for(alphabet), count).astype(np.int64)
    elif coding == "huffman":
        out, _ = huffman.decode(data)
    else:
        raise CorruptArtifactError(f"{where}: unknown stream coding {coding!r}")
    if out.size != count:
        raise CorruptArtifactError(f"{where}: stream holds {out.size} symbols, metadata says {count}")
    if out.size and (out.min() < 0 or out.max() >= alphabet):
        raise CorruptArtifactError(f"{where}: symbol outside alphabet of {alphabet}")
    return out


def _raw(t: torch.Tensor, dtype: str) -> bytes:
    if dtype not in DTYPES:
        raise ConfigError(f"unsupported storage dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    torch_dtype, np_dtype = DTYPES[dtype]
    return t.detach().cpu().to(torch_dtype).numpy().astype(np_dtype, copy=False).tobytes()


def _from_raw(data: bytes, dtype: str, count: int, where: str) -> torch.Tensor:
    if dtype not in DTYPES:
        raise CorruptArtifactError(f"{where}: unknown dtype {dtype!r}")
    torch_dtype, np_dtype = DTYPES[dtype]
    if len(data) != count * np_dtype.itemsize:
        raise CorruptArtifactError(f"{where}: {len(data)} bytes for {count} values of {dtype}")
    arr = np.frombuffer(data, dtype=np_dtype, count=count).copy()
    return torch.from_numpy(arr).to(torch_dtype)


def encode_dense(t: torch.Tensor, dtype: str, key: str) -> Encoded:
    data = _raw(t, dtype)
    return Encoded({"enc": "dense", "dtype": dtype, "blob": key}, {key: data})


def encode_fpack(t: torch.Tensor, key: str) -> Encoded:
    """A float32 tensor bit-field packed (lossless; smaller than dense when exponents or precision repeat)."""
    data = floatpack.encode(t.detach().cpu().float().contiguous().numpy())
    return Encoded({"enc": "fpack", "blob": key}, {key: data})


def decode_floats(meta: dict[str, Any], field: str, blobs: dict[str, bytes], count: int,
                  where: str) -> torch.Tensor:
    """The float32 values of blob ``meta[field]``: raw float32, or bit-packed when ``meta[field[0] +
    "fmt"]`` is ``"fpack"`` (the quantized-weight parameters)."""
    data = _blob(blobs, meta[field], where)
    fmt = meta.get(field[0] + "fmt", "float32")
    if fmt == "float32":
        return _from_raw(data, "float32", count, where)
    if fmt != "fpack":
        raise CorruptArtifactError(f"{where}: unknown float storage {fmt!r}")
    return torch.from_numpy(floatpack.decode(data, count).copy())


def encode_sparse(t: torch.Tensor, key: str, *, index_bits: int | None, coding: Coding,
                  value_dtype: str = "float32", codebook: torch.Tensor | None = None,
                  assign: torch.Tensor | None = None) -> Encoded:
    """Non-zeros by relative index; values raw (``value_dtype``) or as codebook ids (shared weights)."""
    if codebook is not None and assign is not None:
        flat_assign = assign.flatten().cpu().numpy()
        positions = np.flatnonzero(flat_assign != codebook.numel())
    else:
        positions = np.flatnonzero((t.detach().flatten().cpu() != 0).numpy())  # any float dtype (bf16 too)
    n = t.numel()
    bits = index_bits if index_bits is not None else sparse.best_index_bits(positions, n)
    idx_symbols = sparse.encode_positions(positions, n, bits)
    idx_data, idx_stats = encode_stream(idx_symbols, 2**bits, coding)
    meta: dict[str, Any] = {"enc": "sparse", "nnz": int(positions.size), "ibits": bits,
                            "nidx": int(idx_symbols.size), "icode": idx_stats.coding, "iblob": f"{key}.i"}
    blobs = {f"{key}.i": idx_data}
    streams = {"index": idx_stats}
    if codebook is not None and assign is not None:
        ids = flat_assign[positions]
        k = codebook.numel()
        val_data, val_stats = encode_stream(ids, k, coding)
        blobs[f"{key}.c"] = _raw(codebook, "float32")
        meta.update({"vkind": "codebook", "k": k, "vcode": val_stats.coding, "vblob": f"{key}.v",
                     "cblob": f"{key}.c"})
        streams["codebook"] = StreamStats(k, k, "raw", len(blobs[f"{key}.c"]), 0.0, 32 * k)
    else:
        values = t.detach().flatten()[torch.from_numpy(positions)]
        val_data = _raw(values, value_dtype)
        val_stats = StreamStats(int(positions.size), 0, "raw", len(val_data), 0.0, 8 * len(val_data))
        meta.update({"vkind": "raw", "dtype": value_dtype, "vblob": f"{key}.v"})
    blobs[f"{key}.v"] = val_data
    streams["values"] = val_stats
    return Encoded(meta, blobs, streams)


def encode_codebook_dense(codebook: torch.Tensor, assign: torch.Tensor, key: str, coding: Coding) -> Encoded:
    """Every entry as a codebook id (alphabet k+1 when some entries are pruned: id k means zero)."""
    k = codebook.numel()
    ids = assign.flatten().cpu().numpy()
    alphabet = k + 1 if (ids == k).any() else k
    data, stats = encode_stream(ids, alphabet, coding)
    blobs = {f"{key}.v": data, f"{key}.c": _raw(codebook, "float32")}
    meta = {"enc": "codebook", "k": k, "alpha": alphabet, "vcode": stats.coding, "vblob": f"{key}.v",
            "cblob": f"{key}.c"}
    streams = {"values": stats, "codebook": StreamStats(k, k, "raw", len(blobs[f"{key}.c"]), 0.0, 32 * k)}
    return Encoded(meta, blobs, streams)


def decode_tensor(meta: dict[str, Any], shape: tuple[int, ...], blobs: dict[str, bytes],
                  where: str) -> torch.Tensor:
    """Rebuild one tensor from its metadata and blobs; every inconsistency is a CorruptArtifactError."""
    n = math.prod(shape)
    try:
        enc = meta["enc"]
        if enc == "dense":
            return _from_raw(_blob(blobs, meta["blob"], where), meta["dtype"], n, where).view(shape)
        shared = decode_codebook(meta, shape, blobs, where)
        if shared is not None:  # every entry (dense) or every non-zero (sparse) as a codebook id
            codebook, assign = shared
            return torch.cat([codebook, codebook.new_zeros(1)])[assign]
        if enc == "sparse":
            return _decode_sparse(meta, shape, n, blobs, where)
        if enc == "fpack":
            return torch.from_numpy(floatpack.decode(tensor_bytes(meta, blobs, where), n).copy()).view(shape)
        if enc == "quant":  # packed low-bit integer weights (deepshrink.artifact.quantized)
            from deepshrink.artifact.quantized import decode_quant

            return decode_quant(meta, shape, blobs, where)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptArtifactError(f"{where}: malformed tensor metadata ({exc})") from None
    raise CorruptArtifactError(f"{where}: unknown tensor encoding {enc!r}")


def decode_codebook(meta: dict[str, Any], shape: tuple[int, ...], blobs: dict[str, bytes],
                    where: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(codebook, assign)`` of a shared-weight tensor exactly as stored (every centroid, used or not;
    ``assign == k`` where the weight is zero), or None when the tensor is not stored with a codebook."""
    n = math.prod(shape)
    try:
        if meta.get("enc") == "codebook":
            k, alpha = int(meta["k"]), int(meta["alpha"])
            codebook = _from_raw(_blob(blobs, meta["cblob"], where), "float32", k, where)
            if not 1 <= alpha <= k + 1:  # ids index the codebook + one zero slot
                raise CorruptArtifactError(f"{where}: codebook alphabet {alpha} exceeds {k} ids + 1")
            ids = decode_stream(_blob(blobs, meta["vblob"], where), meta["vcode"], alpha, n, where)
            return codebook, torch.from_numpy(ids.astype(np.int64)).view(shape)
        if meta.get("enc") == "sparse" and meta.get("vkind") == "codebook":
            positions = _sparse_positions(meta, n, blobs, where)
            k, nnz = int(meta["k"]), positions.size
            codebook = _from_raw(_blob(blobs, meta["cblob"], where), "float32", k, where)
            assign = torch.full((n,), k, dtype=torch.int64)
            assign[torch.from_numpy(positions)] = torch.from_numpy(
                decode_stream(_blob(blobs, meta["vblob"], where), meta["vcode"], k, nnz, where).astype(np.int64))
            return codebook, assign.view(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptArtifactError(f"{where}: malformed tensor metadata ({exc})") from None
    return None


def _sparse_positions(meta: dict[str, Any], n: int, blobs: dict[str, bytes], where: str) -> np.ndarray:
    """The flat positions of a sparse tensor's non-zeros, checked against its metadata."""
    bits, nnz = int(meta["ibits"]), int(meta["nnz"])
    if not 1 <= bits <= 16 or not 0 <= nnz <= n:
        raise CorruptArtifactError(f"{where}: index bits {bits} or non-zeros {nnz} out of range")
    symbols = decode_stream(_blob(blobs, meta["iblob"], where), meta["icode"], 2**bits, int(meta["nidx"]), where)
    positions = sparse.decode_positions(symbols, n, bits)
    if positions.size != nnz:
        raise CorruptArtifactError(f"{where}: index stream gives {positions.size} non-zeros, metadata says {nnz}")
    return positions


def _decode_sparse(meta: dict[str, Any], shape: tuple[int, ...], n: int, blobs: dict[str, bytes],
                   where: str) -> torch.Tensor:
    positions = _sparse_positions(meta, n, blobs, where)
    nnz = positions.size
    if meta["vkind"] == "raw":
        values = _from_raw(_blob(blobs, meta["vblob"], where), meta["dtype"], nnz, where).float()
    else:
        raise CorruptArtifactError(f"{where}: unknown value kind {meta['vkind']!r}")
    out = torch.zeros(n, dtype=values.dtype)
    out[torch.from_numpy(positions)] = values
    return out.view(shape)


def tensor_bytes(meta: dict[str, Any], blobs: dict[str, bytes], where: str) -> bytes:
    """Blob ``meta["blob"]``, or its slice ``meta["at"] = [offset, length]`` when several tensors share
    one blob (a bundle: one blob-table entry instead of one per stream)."""
    data = _blob(blobs, meta["blob"], where)
    if "at" not in meta:
        return data
    at = meta["at"]
    if (not isinstance(at, list) or len(at) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            and v >= 0 for v in at) or sum(at) > len(data)):
        raise CorruptArtifactError(f"{where}: slice {at!r} is not inside the {len(data)}-byte blob")
    return data[at[0]:at[0] + at[1]]


def _blob(blobs: dict[str, bytes], name: str, where: str) -> bytes:
    try:
        return blobs[name]
    except KeyError:
        raise CorruptArtifactError(f"{where}: blob {name!r} is missing") from None
