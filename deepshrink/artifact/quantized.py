"""Quantized weights in the artifact: integer codes (1-8 bits) plus scales and zero points (or
per-channel lookup tables for power-of-two and k-means).

Encoding ``quant``: ``codes`` blob (``qblob``), ``cshape = [C, G, K]`` (the grouped view; omitted when it
is the per-channel default ``[shape[0], 1, numel / shape[0]]``), ``scale``/``zp`` blobs of ``C * G``
values each, or a ``levels`` blob of ``C * G * 2^bits`` values. Decoding uses the same ``dequantize``
formula as the in-memory model, so ``deepshrink.load`` rebuilds weights bit-for-bit and outputs equal
the quantized model's.

Compaction for small models (where fixed costs dominate), every step lossless and chosen per tensor:

* codes (``qcode``): bit-packed at ``bits`` (``packed``, the default), Huffman-coded (``huffman``, when
  that saves at least 5%), or adaptively range-coded around the zero point (``arith``,
  ``codec.arith``: no code table, so it wins on small layers; tried up to ``ARITH_MAX_SYMBOLS`` codes,
  kept when it saves at least 1%). ``qc`` is the arith center when it is not the per-group zero point.
* scales, zero points and levels (``sfmt``/``zfmt``/``lfmt``): raw float32 or ``fpack`` (only the
  sign/exponent/mantissa bits that vary; a float16-representable scale costs about 12 bits).
* a zero point that is the same for every group is one metadata value (``zconst``), no blob.
* :func:`save_quantized` also stores other float32 tensors (biases) as ``fpack`` when smaller, and
  writes the container's dictionary-compressed metadata (container format version 2).

Files without these keys (older writers) decode as before.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.artifact import tensors as T
from deepshrink.artifact.model_io import (
    SaveReport, StoragePolicy, TensorReport, encode_model, refuse_unsavable,
)
from deepshrink.codec import arith, container, floatpack, huffman, packing
from deepshrink.core.errors import ConfigError, CorruptArtifactError
from deepshrink.quantize import primitives as P
from deepshrink.quantize.modules import QuantizedWeight, quantized_weight
from deepshrink.quantize.qat import freeze

#: Huffman-code the codes only when that saves at least 5% over bit packing (decoding costs time).
HUFFMAN_MIN_GAIN = 0.95
#: Range-code the codes only when that saves at least 1% over the better of packing and Huffman.
ARITH_MIN_GAIN = 0.99
#: The range coder runs a Python loop (about 10 us a code): tensors with more codes skip it (for them a
#: Huffman table is a negligible cost anyway).
ARITH_MAX_SYMBOLS = 1 << 14
BUNDLE = "b"  # the blob that holds every quantized and fpack tensor of a save_quantized file
BLOB_FIELDS = ("blob", "iblob", "vblob", "cblob", "qblob", "sblob", "zblob", "lblob")


def _floats(meta: dict[str, Any], blobs: dict[str, bytes], field: str, name: str, values: torch.Tensor) -> None:
    """Store float32 ``values`` under blob ``name`` as raw float32 or ``fpack``, whichever is smaller."""
    arr = values.detach().cpu().float().contiguous().reshape(-1).numpy()
    packed = floatpack.encode(arr)
    meta[field] = name
    if len(packed) < 4 * arr.size:
        meta[field[0] + "fmt"] = "fpack"
        blobs[name] = packed
    else:
        blobs[name] = arr.astype("<f4").tobytes()


def _arith_centers(codes: np.ndarray, zp: torch.Tensor | None, bits: int) -> tuple[int | np.ndarray, int | None]:
    """(centers for the range coder, the ``qc`` value to record or None when centers are the zero points)."""
    if zp is not None:
        z = zp.detach().cpu().double().reshape(-1).numpy()
        if np.all(z == np.round(z)) and z.min() >= 0 and z.max() < 2**bits:
            c, g, k = codes.shape
            return np.repeat(z.astype(np.int64), k), None
    center = int(np.median(codes)) if codes.size else 0
    return center, center


def _pow2_max(q: QuantizedWeight) -> torch.Tensor | None:
    """Each row's largest level when ``q.levels`` is exactly a power-of-two table of it, else None."""
    levels = q.levels
    if q.scheme != "pow2" or levels is None or q.bits < 2 or levels.dim() != 3 or levels.shape[2] != 2**q.bits:
        return None
    m = levels[:, :, 1:2].detach().cpu().float()
    return m if torch.equal(P.pow2_table(m, q.bits), levels.detach().cpu().float()) else None


def encode_quant(q: QuantizedWeight, key: str) -> T.Encoded:
    """Codes (bit-packed, Huffman- or range-coded, whichever is smallest) + parameters of one frozen
    quantized weight."""
    codes3 = q.codes.detach().cpu().numpy().astype(np.int64)
    c, g, k = codes3.shape
    codes = codes3.ravel()
    meta: dict[str, Any] = {"enc": "quant", "bits": q.bits, "scheme": q.scheme, "qblob": f"{key}.q"}
    if [c, g, k] != [q.shape[0], 1, math.prod(q.shape) // q.shape[0]]:
        meta["cshape"] = [c, g, k]
    blobs: dict[str, bytes] = {}
    zp = None
    pow2_max = _pow2_max(q)
    if pow2_max is not None:
        meta["pow2"] = True  # the table follows from each row's largest magnitude (P.pow2_table)
        _floats(meta, blobs, "sblob", f"{key}.s", pow2_max)
    elif q.levels is not None:
        _floats(meta, blobs, "lblob", f"{key}.l", q.levels)
    else:
        _floats(meta, blobs, "sblob", f"{key}.s", q.scale.expand(c, g, 1))
        zp = q.zero_point.detach().cpu().float().expand(c, g, 1)
        first = float(zp.reshape(-1)[0])
        if bool((zp == first).all()) and math.isfinite(first):
            meta["zconst"] = first  # one value for every group: no blob (JSON floats round-trip exactly)
        else:
            _floats(meta, blobs, "zblob", f"{key}.z", zp)
    options = {"packed": packing.pack_bits(codes, q.bits)}
    if codes.size:
        coded = huffman.encode(codes, 2**q.bits)
        if len(coded) <= HUFFMAN_MIN_GAIN * len(options["packed"]):
            options["huffman"] = coded
    if 0 < codes.size <= ARITH_MAX_SYMBOLS:
        centers, qc = _arith_centers(codes3, zp, q.bits)
        coded = arith.encode(codes, 2**q.bits, centers)
        if len(coded) <= ARITH_MIN_GAIN * min(len(b) for b in options.values()):
            options["arith"] = coded
            if qc is not None:
                meta["qc"] = qc
    chosen = min(options, key=lambda o: len(options[o]))
    if chosen != "packed":
        meta["qcode"] = chosen
    if chosen != "arith":
        meta.pop("qc", None)
    blobs[f"{key}.q"] = options[chosen]
    stats = T.StreamStats(codes.size, 2**q.bits, chosen, len(options[chosen]), 0.0, q.bits * codes.size)
    return T.Encoded(meta, blobs, {"codes": stats})


def encode_int_codes(t: torch.Tensor, bits: int, key: str, *, signed: bool = True) -> T.Encoded:
    """Signed integer codes in ``[-2^(bits-1), 2^(bits-1))`` (e.g. int8 Linear weights kept at 7 bits) as a
    ``quant`` tensor: offset by ``2^(bits-1)``, per-row unit scale and zero point ``2^(bits-1)``, so
    :func:`decode_quant` gives the integers back exactly (the loader casts them to the buffer's dtype).
    ``signed=False``: codes in ``[0, 2^bits)`` (codebook indices), zero point 0."""
    bits = P.check_bits(bits)
    if t.dim() < 1 or t.numel() == 0 or t.is_floating_point():
        raise ConfigError(f"integer codes must be a non-empty integer tensor, got {t.dtype} {tuple(t.shape)}")
    half = 2 ** (bits - 1) if signed else 0
    lo, hi = int(t.min()), int(t.max())
    if lo < -half or hi >= 2**bits - half:
        raise ConfigError(f"integer codes in [{lo}, {hi}] do not fit {bits} {'signed' if signed else 'unsigned'} "
                          "bits")
    rows = t.shape[0]
    codes = (t.detach().cpu().to(torch.int64) + half).reshape(rows, 1, -1)
    q = QuantizedWeight(codes, bits, tuple(t.shape), scale=torch.ones(rows, 1, 1),
                        zero_point=torch.full((rows, 1, 1), float(half)))
    return encode_quant(q, key)


def _grouped_shape(meta: dict[str, Any], shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    """``cshape`` (or the per-channel default when absent), checked against the tensor's shape."""
    n = math.prod(shape)
    cshape = meta.get("cshape")
    if cshape is None:
        if not shape or shape[0] < 1:
            raise CorruptArtifactError(f"{where}: a quantized weight needs a non-empty shape")
        cshape = [shape[0], 1, n // shape[0]]
    if not isinstance(cshape, list) or len(cshape) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in cshape):
        raise CorruptArtifactError(f"{where}: bad quantized-weight header")
    c, g, k = cshape
    if min(c, g, k) < 1 or c * g * k != n:
        raise CorruptArtifactError(f"{where}: grouped shape {cshape} does not hold {n} weights")
    return c, g, k


def _decode_codes(meta: dict[str, Any], raw: bytes, bits: int, n: int, centers: int | np.ndarray,
                  where: str) -> np.ndarray:
    """The ``n`` integer codes from their stream, per ``qcode`` (packed when absent)."""
    coding = meta.get("qcode", "packed")
    if coding == "packed":
        return packing.unpack_bits(raw, bits, n).astype(np.int64)
    if coding == "arith":
        if n > ARITH_MAX_SYMBOLS:  # never written: a hostile file must not start a Python loop of 2^28 steps
            raise CorruptArtifactError(f"{where}: {n} range-coded codes, over the {ARITH_MAX_SYMBOLS} limit")
        return arith.decode(raw, 2**bits, n, centers)
    if coding != "huffman":
        raise CorruptArtifactError(f"{where}: unknown code coding {coding!r}")
    codes, used = huffman.decode(raw)
    if used != len(raw) or codes.size != n or (codes.size and int(codes.max()) >= 2**bits):
        raise CorruptArtifactError(f"{where}: Huffman codes do not hold {n} values of {bits} bits")
    return codes.astype(np.int64)


def _zero_points(meta: dict[str, Any], blobs: dict[str, bytes], count: int, where: str) -> torch.Tensor:
    """Per-group zero points: the constant ``zconst`` or the ``zblob`` values."""
    if "zconst" in meta:
        z = meta["zconst"]
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(float(z)):
            raise CorruptArtifactError(f"{where}: bad constant zero point {z!r}")
        return torch.full((count,), float(z), dtype=torch.float32)
    if "zblob" not in meta:
        raise CorruptArtifactError(f"{where}: zero points are missing")
    return T.decode_floats(meta, "zblob", blobs, count, where)


def _centers(meta: dict[str, Any], zp: torch.Tensor | None, k: int, bits: int, where: str) -> int | np.ndarray:
    """The range coder's centers: ``qc``, else each group's zero point (which must then be a code)."""
    if meta.get("qcode") != "arith":
        return 0
    if "qc" in meta:
        qc = meta["qc"]
        if isinstance(qc, bool) or not isinstance(qc, int) or not 0 <= qc < 2**bits:
            raise CorruptArtifactError(f"{where}: bad code center {qc!r}")
        return qc
    z = zp.double().numpy() if zp is not None else np.zeros(0)
    if zp is None or not np.all(z == np.round(z)) or z.min() < 0 or z.max() >= 2**bits:
        raise CorruptArtifactError(f"{where}: range-coded codes need integer zero points or a center")
    return np.repeat(z.astype(np.int64), k)


def _part_nbytes(meta: dict[str, Any], field: str, count: int, data: bytes, where: str) -> int:
    """Bytes of one bundled float part (raw float32 or fpack) of ``count`` values at the start of ``data``."""
    if meta.get(field[0] + "fmt", "float32") == "fpack":
        return floatpack.nbytes(count, data)
    return 4 * count


def _unbundle(meta: dict[str, Any], blobs: dict[str, bytes], c: int, g: int, bits: int,
              where: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Split a bundled tensor's slice (parameters in field order, then the codes) into named parts."""
    data = T.tensor_bytes(meta, blobs, where)
    if "lblob" in meta:
        fields = [("lblob", c * g * 2**bits)]
    else:
        fields = [("sblob", c * g)] + ([("zblob", c * g)] if "zblob" in meta else [])
    meta = {key: v for key, v in meta.items() if key not in ("blob", "at")}
    parts, pos = {}, 0
    for field, count in fields:
        size = _part_nbytes(meta, field, count, data[pos:], where)
        if pos + size > len(data):
            raise CorruptArtifactError(f"{where}: bundled parameters run past the tensor's slice")
        meta[field] = field
        parts[field] = data[pos:pos + size]
        pos += size
    meta["qblob"] = "codes"
    parts["codes"] = data[pos:]
    return meta, parts


def bundled_streams(meta: dict[str, Any], blobs: dict[str, bytes], where: str) -> dict[str, int]:
    """Bytes per stream (levels, scales, zero_points, codes; dense for fpack) of a bundled tensor, for
    ``inspect``; malformed metadata is a CorruptArtifactError."""
    try:
        if meta.get("enc") != "quant":
            return {"dense": len(T.tensor_bytes(meta, blobs, where))}
        bits = meta["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise CorruptArtifactError(f"{where}: bad quantized-weight header")
        c, g, _ = _grouped_shape(meta, tuple(int(d) for d in meta["shape"]), where)
        _, parts = _unbundle(meta, blobs, c, g, bits, where)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptArtifactError(f"{where}: malformed tensor metadata ({exc})") from None
    names = {"lblob": "levels", "sblob": "scales", "zblob": "zero_points", "codes": "codes"}
    return {names[f]: len(b) for f, b in parts.items()}


def decode_quant(meta: dict[str, Any], shape: tuple[int, ...], blobs: dict[str, bytes],
                 where: str) -> torch.Tensor:
    """Inverse of :func:`encode_quant`; every inconsistency is a CorruptArtifactError."""
    bits = meta["bits"]
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise CorruptArtifactError(f"{where}: bad quantized-weight header")
    c, g, k = _grouped_shape(meta, shape, where)
    n = c * g * k
    if "at" in meta:
        meta, blobs = _unbundle(meta, blobs, c, g, bits, where)
    raw = blobs.get(meta["qblob"])
    if raw is None:
        raise CorruptArtifactError(f"{where}: codes blob is missing")
    if "lblob" in meta or meta.get("pow2") is True:
        if "lblob" in meta:
            levels = T.decode_floats(meta, "lblob", blobs, c * g * 2**bits, where).view(c, g, 2**bits)
        elif bits < 2:
            raise CorruptArtifactError(f"{where}: a power-of-two table needs 2 or more bits, got {bits}")
        else:
            levels = P.pow2_table(T.decode_floats(meta, "sblob", blobs, c * g, where).view(c, g, 1), bits)
        codes = torch.from_numpy(_decode_codes(meta, raw, bits, n, _centers(meta, None, k, bits, where), where))
        return P.lut_dequantize(codes.view(c, g, k), levels).reshape(shape)
    scale = T.decode_floats(meta, "sblob", blobs, c * g, where).view(c, g, 1)
    zp = _zero_points(meta, blobs, c * g, where)
    codes = torch.from_numpy(_decode_codes(meta, raw, bits, n, _centers(meta, zp, k, bits, where), where))
    return P.dequantize(codes.view(c, g, k), scale, zp.view(c, g, 1)).reshape(shape)


def _bundle(tensors: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Move every quantized and fpack tensor into one blob ``BUNDLE`` (``at = [offset, length]``; a
    quantized slice holds levels, or scales then zero points, then the codes, lengths implied by the
    shapes): small models then pay one blob-table entry instead of two or three per layer."""
    bundle, names = bytearray(), set(blobs)
    for name in sorted(tensors):
        tmeta = tensors[name]
        if tmeta.get("enc") == "fpack" and "at" not in tmeta:
            fields = ["blob"]
        elif tmeta.get("enc") == "quant" and "at" not in tmeta:
            fields = [f for f in ("lblob", "sblob", "zblob") if f in tmeta] + ["qblob"]
        else:
            continue
        start = len(bundle)
        for field in fields:  # levels and zero-point parts keep their key (value BUNDLE) as a marker
            bundle += blobs.pop(tmeta[field] if field in ("lblob", "zblob") else tmeta.pop(field))
            if field in ("lblob", "zblob"):
                tmeta[field] = BUNDLE
        tmeta.update({"blob": BUNDLE, "at": [start, len(bundle) - start]})
    if BUNDLE in names:
        raise ConfigError(f"blob name {BUNDLE!r} is reserved for the quantized bundle")
    blobs[BUNDLE] = bytes(bundle)


def save_quantized(model: nn.Module, path: str | os.PathLike[str], policy: StoragePolicy | None = None,
                   info: dict[str, Any] | None = None) -> SaveReport:
    """Write a weight-quantized model (QAT fake quantizers are frozen first, on a copy).

    Activation quantizers are not stored: a model with them raises ConfigError (save the weight-only
    model, or convert with ``backends.to_int8`` for integer execution).
    """
    refuse_unsavable(model)
    model = freeze(copy.deepcopy(model))
    meta, blobs, reports = encode_model(model, policy, info)
    by_name = {r.name: i for i, r in enumerate(reports)}
    for mod_name, module in model.named_modules():
        q = quantized_weight(module)
        if q is None:
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        old = meta["tensors"][name]
        for f in BLOB_FIELDS:
            if f in old:
                blobs.pop(old[f], None)
        key = old.get("blob") or old.get("vblob") or old.get("iblob") or name
        key = key.rsplit(".", 1)[0] if key != old.get("blob") else key
        enc = encode_quant(q, f"{key}q")
        enc.meta["shape"] = list(q.shape)
        meta["tensors"][name] = enc.meta
        blobs.update(enc.blobs)
        nnz = int((module.weight != 0).sum())
        reports[by_name[name]] = TensorReport(name, q.shape, math.prod(q.shape), nnz, "quant", enc.nbytes,
                                              None, q.bits, enc.streams)
    for name, tmeta in meta["tensors"].items():
        if tmeta.get("enc") == "dense" and tmeta.get("dtype") == "float32":
            values = np.frombuffer(blobs[tmeta["blob"]], dtype="<f4")
            packed = floatpack.encode(values.astype(np.float32))
            if len(packed) < len(blobs[tmeta["blob"]]):  # lossless: sign/exponent/mantissa bits that vary
                blobs[tmeta["blob"]] = packed
                meta["tensors"][name] = {"enc": "fpack", "blob": tmeta["blob"], "shape": tmeta["shape"]}
                rep = reports[by_name[name]]
                rep.encoding, rep.nbytes = "fpack", len(packed)
    _bundle(meta["tensors"], blobs)
    nbytes = container.write_container(path, meta, blobs, compact=True)
    return SaveReport(str(path), nbytes, nbytes - sum(len(b) for b in blobs.values()), reports)
