"""Shared by the hardening tests and benchmarks/fuzz_artifact.py: small reference artifacts, valid
re-sealing of tampered containers, mutators, and a one-input oracle for the artifact reader."""

from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.artifact import StoragePolicy, load, save
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError, DeepShrinkError
from deepshrink.models import create
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import prune_layer
from deepshrink.quantize.kmeans import share_weights

# (zoo name, kwargs, layers to prune/share): tiny so that one load takes about a millisecond
TINY: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "mlp": ("mlp", {"in_features": 12, "hidden": [10], "num_classes": 4}, ("layers.fc1", "layers.fc2")),
    "lenet300": ("lenet300", {"in_features": 16, "hidden": [12, 8], "num_classes": 3}, ("fc1", "fc2")),
    "cnn1d": ("cnn1d", {"length": 16, "channels": 3, "num_classes": 4}, ("conv2", "fc")),
}


def tiny_model(kind: str, seed: int = 0, keep: float | None = None, bits: int | None = None) -> nn.Module:
    """A tiny zoo model, optionally pruned to ``keep`` and weight-shared at ``bits`` on its main layers."""
    zoo, kwargs, layers = TINY[kind]
    torch.manual_seed(seed)
    model = create(zoo, **kwargs).eval()
    mods = [model.get_submodule(n) for n in layers]
    if keep is not None:
        for m in mods:
            prune_layer(m, keep)
        remove_masks(model)
    if bits is not None:
        for m in mods:
            share_weights(m, bits, iters=10)
    return model


def reference_artifacts(folder: Path) -> dict[str, bytes]:
    """Valid artifacts covering dense, sparse (packed and Huffman indices), codebook and fp16 encodings."""
    cases = {
        "dense": (tiny_model("mlp"), StoragePolicy()),
        "sparse_raw": (tiny_model("lenet300", 1, keep=0.3), StoragePolicy(index_bits=3, coding="packed")),
        "sparse_cb_huff": (tiny_model("lenet300", 2, keep=0.2, bits=2), StoragePolicy(coding="huffman")),
        "codebook": (tiny_model("mlp", 3, bits=3), StoragePolicy(sparse=False, coding="auto")),
        "cnn_fp16": (tiny_model("cnn1d", 4, keep=0.5, bits=2), StoragePolicy(small_dtype="float16")),
    }
    out = {}
    for name, (model, policy) in cases.items():
        path = folder / f"{name}.dsk"
        save(model, path, policy)
        out[name] = path.read_bytes()
    return out


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(meta document with 'meta' and 'blobs', blob section) of valid container bytes."""
    _, _, flags, meta_len, _, _ = struct.unpack("<8sHHIQ32s", data[: container.HEADER_NBYTES])
    stored = data[container.HEADER_NBYTES : container.HEADER_NBYTES + meta_len]
    raw = zlib.decompress(stored) if flags & container.FLAG_META_ZLIB else stored
    return json.loads(raw), data[container.HEADER_NBYTES + meta_len :]


def reseal(doc: Any, blob_section: bytes, compress: bool = False, raw_meta: bytes | None = None,
           level: int = 9) -> bytes:
    """Container bytes with a *valid* header and checksum around an arbitrary meta document."""
    meta = raw_meta if raw_meta is not None else json.dumps(doc, separators=(",", ":")).encode()
    flags = 0
    if compress:
        meta, flags = zlib.compress(meta, level), container.FLAG_META_ZLIB
    head = container._header_and_digest(meta, [blob_section], flags)
    return head + meta + blob_section


# ---- mutations --------------------------------------------------------------------------------------

INTERESTING: list[Any] = [-1, 0, 1, 2, 3, 7, 255, 65536, 2**31, 2**32 + 1, 2**63, -(2**63), 10**30, 0.5,
                          -1e300, "", "x", "dense", "sparse", "codebook", "huffman", "packed", "raw",
                          "float64", "bool", "int8", "mlp", "lenet5", None, True, False, [], {}, [1, 2, 3],
                          [10**6, 10**6],
                          [[]], {"a": 1}, [-1], [0], [2**40], "t0", "t0.v", "t1.i"]


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) inside a JSON document."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, path + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def mutate_doc(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three structural edits of a meta document: replace, splice, delete or add a value."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _nodes(doc) if p]
        path = rng.choice(paths)
        parent, key = _get(doc, path[:-1]), path[-1]
        op = rng.random()
        if op < 0.55:
            value = rng.choice(INTERESTING)
        elif op < 0.75:
            value = copy.deepcopy(_get(doc, rng.choice(paths)))  # splice another part of the document
        elif op < 0.85:
            cur = parent[key]
            step = rng.choice([-1, 1, -(2**20), 2**20])
            value = cur + step if isinstance(cur, int) else rng.choice(INTERESTING)
        elif op < 0.93:
            del parent[key]
            continue
        else:
            if isinstance(parent, dict):
                parent[rng.choice(["extra", "enc", "shape", "k", "nnz", "kwargs"])] = rng.choice(INTERESTING)
            else:
                parent.append(rng.choice(INTERESTING))
            continue
        parent[key] = copy.deepcopy(value)
    return doc


def mutate_blobs(blob_section: bytes, rng: random.Random) -> bytes:
    """Flip bits or overwrite bytes inside the blob section (the caller re-seals the checksum)."""
    if not blob_section:
        return blob_section
    buf = bytearray(blob_section)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[i] ^= 1 << rng.randrange(8)
        else:
            buf[i] = rng.randrange(256)
    return bytes(buf)


def mutate_raw(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage without re-sealing: truncation, bit flips, random overwrites, insertions."""
    op = rng.random()
    buf = bytearray(data)
    if op < 0.25:
        return bytes(buf[: rng.randrange(len(buf))])
    if op < 0.5:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op < 0.8:
        i = rng.randrange(len(buf))
        n = rng.randint(1, 16)
        buf[i : i + n] = bytes(rng.randrange(256) for _ in range(n))
        return bytes(buf)
    i = rng.randrange(len(buf) + 1)
    return bytes(buf[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + buf[i:])


def mutate_resealed(data: bytes, rng: random.Random) -> bytes:
    """Tamper with the meta document and/or blobs, then recompute a valid checksum."""
    doc, blobs = split(data)
    op = rng.random()
    if op < 0.6:
        doc = mutate_doc(doc, rng)
    elif op < 0.85:
        blobs = mutate_blobs(blobs, rng)
    else:
        doc, blobs = mutate_doc(doc, rng), mutate_blobs(blobs, rng)
    return reseal(doc, blobs, compress=rng.random() < 0.5)


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {"raw": mutate_raw,
                                                                 "resealed": mutate_resealed}


def outcome(data: bytes, path: Path, strict: bool = True) -> str:
    """'loaded' or 'rejected' (an ArtifactError, so the CLI exits 3; any DeepShrinkError when not
    ``strict``); any other exception propagates (a finding)."""
    path.write_bytes(data)
    try:
        model = load(path)
    except ArtifactError:
        return "rejected"
    except DeepShrinkError:
        if strict:
            raise
        return "rejected"
    if not isinstance(model, nn.Module):
        raise TypeError(f"load returned {type(model).__name__}")
    return "loaded"
