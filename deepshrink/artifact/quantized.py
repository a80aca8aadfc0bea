"""Quantized weights in the artifact: integer codes bit-packed at their width (1-8 bits) plus float32
scales and zero points (or per-channel lookup tables for power-of-two).

Encoding ``quant``: ``codes`` blob (``pack_bits`` at ``bits``), ``cshape = [C, G, K]`` (the grouped view),
``scale``/``zp`` blobs of ``C * G`` float32 each, or a ``levels`` blob of ``C * G * 2^bits`` float32.
Decoding uses the same ``dequantize`` formula as the in-memory model, so ``deepshrink.load`` rebuilds
weights bit-for-bit and outputs equal the quantized model's.

Compaction for small models (where fixed costs dominate), both lossless and chosen per layer: a zero
point that is the same for every group (symmetric, binary, ternary schemes) is written once in the
metadata (``zconst``) instead of a ``zp`` blob; the codes are Huffman-coded (``qcode: "huffman"``)
when that saves at least 5% over bit packing. Files without these keys (older writers) decode as before.
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
from deepshrink.artifact.model_io import SaveReport, StoragePolicy, TensorReport, encode_model
from deepshrink.codec import container, huffman, packing
from deepshrink.core.errors import ConfigError, CorruptArtifactError
from deepshrink.quantize import primitives as P
from deepshrink.quantize.modules import QuantizedWeight, input_quantizers, quantized_weight
from deepshrink.quantize.qat import freeze

#: Huffman-code the codes only when that saves at least 5% over bit packing (decoding costs time).
HUFFMAN_MIN_GAIN = 0.95
BLOB_FIELDS = ("blob", "iblob", "vblob", "cblob", "qblob", "sblob", "zblob", "lblob")


def encode_quant(q: QuantizedWeight, key: str) -> T.Encoded:
    """Codes (bit-packed, or Huffman-coded when smaller) + float32 parameters of one frozen quantized weight."""
    codes = q.codes.detach().cpu().numpy().astype(np.int64)
    c, g, k = codes.shape
    packed = packing.pack_bits(codes.ravel(), q.bits)
    coded = huffman.encode(codes.ravel(), 2**q.bits) if codes.size else packed
    meta: dict[str, Any] = {"enc": "quant", "bits": q.bits, "scheme": q.scheme, "cshape": [c, g, k],
                            "qblob": f"{key}.q"}
    if len(coded) <= HUFFMAN_MIN_GAIN * len(packed):
        meta["qcode"] = "huffman"
        blobs = {f"{key}.q": coded}
    else:
        blobs = {f"{key}.q": packed}
    if q.levels is not None:
        blobs[f"{key}.l"] = T._raw(q.levels.reshape(-1), "float32")
        meta["lblob"] = f"{key}.l"
    else:
        blobs[f"{key}.s"] = T._raw(q.scale.expand(c, g, 1).reshape(-1), "float32")
        meta["sblob"] = f"{key}.s"
        zp = q.zero_point.detach().cpu().float()
        first = float(zp.reshape(-1)[0])
        if bool((zp == first).all()) and math.isfinite(first):
            meta["zconst"] = first  # one value for every group: no blob (JSON floats round-trip exactly)
        else:
            blobs[f"{key}.z"] = T._raw(q.zero_point.expand(c, g, 1).reshape(-1), "float32")
            meta["zblob"] = f"{key}.z"
    stats = T.StreamStats(codes.size, 2**q.bits, meta.get("qcode", "packed"), len(blobs[f"{key}.q"]), 0.0,
                          q.bits * codes.size)
    return T.Encoded(meta, blobs, {"codes": stats})


def _decode_codes(meta: dict[str, Any], raw: bytes, bits: int, n: int, where: str) -> np.ndarray:
    coding = meta.get("qcode", "packed")
    if coding == "packed":
        return packing.unpack_bits(raw, bits, n).astype(np.int64)
    if coding != "huffman":
        raise CorruptArtifactError(f"{where}: unknown code coding {coding!r}")
    codes, used = huffman.decode(raw)
    if used != len(raw) or codes.size != n or (codes.size and int(codes.max()) >= 2**bits):
        raise CorruptArtifactError(f"{where}: Huffman codes do not hold {n} values of {bits} bits")
    return codes.astype(np.int64)


def _zero_points(meta: dict[str, Any], blobs: dict[str, bytes], count: int, where: str) -> torch.Tensor:
    if "zconst" in meta:
        z = meta["zconst"]
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(float(z)):
            raise CorruptArtifactError(f"{where}: bad constant zero point {z!r}")
        return torch.full((count,), float(z), dtype=torch.float32)
    if "zblob" not in meta:
        raise CorruptArtifactError(f"{where}: zero points are missing")
    return T._from_raw(blobs.get(meta["zblob"], b""), "float32", count, where)


def decode_quant(meta: dict[str, Any], shape: tuple[int, ...], blobs: dict[str, bytes],
                 where: str) -> torch.Tensor:
    """Inverse of :func:`encode_quant`; every inconsistency is a CorruptArtifactError."""
    bits = int(meta["bits"])
    cshape = meta["cshape"]
    if not 1 <= bits <= 8 or not isinstance(cshape, list) or len(cshape) != 3:
        raise CorruptArtifactError(f"{where}: bad quantized-weight header")
    c, g, k = (int(v) for v in cshape)
    n = math.prod(shape)
    if min(c, g, k) < 1 or c * g * k != n:
        raise CorruptArtifactError(f"{where}: grouped shape {cshape} does not hold {n} weights")
    raw = blobs.get(meta["qblob"])
    if raw is None:
        raise CorruptArtifactError(f"{where}: codes blob is missing")
    codes = torch.from_numpy(_decode_codes(meta, raw, bits, n, where)).view(c, g, k)
    if "lblob" in meta:
        levels = T._from_raw(blobs.get(meta["lblob"], b""), "float32", c * g * 2**bits, where)
        levels = levels.view(c, g, 2**bits)
        out = P.lut_dequantize(codes, levels)
    else:
        scale = T._from_raw(blobs.get(meta["sblob"], b""), "float32", c * g, where).view(c, g, 1)
        zp = _zero_points(meta, blobs, c * g, where).view(c, g, 1)
        out = P.dequantize(codes, scale, zp)
    return out.reshape(shape)


def save_quantized(model: nn.Module, path: str | os.PathLike[str], policy: StoragePolicy | None = None,
                   info: dict[str, Any] | None = None) -> SaveReport:
    """Write a weight-quantized model (QAT fake quantizers are frozen first, on a copy).

    Activation quantizers are not stored: a model with them raises ConfigError (save the weight-only
    model, or convert with ``backends.to_int8`` for integer execution).
    """
    if input_quantizers(model):
        raise ConfigError("save_quantized stores weights only; this model has activation quantizers")
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
    nbytes = container.write_container(path, meta, blobs)
    return SaveReport(str(path), nbytes, nbytes - sum(len(b) for b in blobs.values()), reports)
