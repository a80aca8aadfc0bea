"""Compressing the word-embedding table (47 MB of all-MiniLM-L6-v2's 90 MB).

- ``Int8Embedding``: symmetric int8 codes per row with one float32 scale per row (4x smaller).
- ``CodebookEmbedding``: k-means codebook of ``2^bits`` scalars shared by the table, uint8 ids per value
  (the artifact bit-packs the ids; ONNX keeps one byte per id).
- ``prune_vocabulary``: keep only the rows of tokens a given corpus uses (plus the special tokens); a
  ``token_map`` buffer in the encoder remaps tokenizer ids to the new rows, and every unseen token maps to
  ``[UNK]``. This changes the model's outputs for any text with tokens outside the corpus: use it only when
  the deployment text is known (``check_known`` raises on such input instead of mapping it to ``[UNK]``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError


class Int8Embedding(nn.Module):
    """Embedding lookup from int8 codes times a per-row float32 scale."""

    deepshrink_weight_buffers = ("codes",)  # counted as parameters (deepshrink.measure.count)

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        w = emb.weight.detach().float()
        out = cls(w.shape[0], w.shape[1], emb.padding_idx)
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        out.codes.copy_(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        out.scale.copy_(scale)
        return out

    @property
    def weight(self) -> torch.Tensor:
        return self.codes.float() * self.scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codes[ids].float() * self.scale[ids]


class CodebookEmbedding(nn.Module):
    """Embedding lookup ``codebook[ids_table[ids]]`` with a k-means codebook of ``2^bits`` values."""

    deepshrink_weight_buffers = ("codes",)  # counted as parameters (deepshrink.measure.count)

    @property
    def deepshrink_uint_codes(self) -> dict[str, int]:
        """Unsigned integer buffers the artifact stores bit-packed, with their width (``deepshrink.save``)."""
        return {"codes": self.bits}

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, padding_idx: int | None = None) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"codebook bits must be an integer in 1..8, got {bits!r}")
        self.num_embeddings, self.embedding_dim, self.padding_idx, self.bits = (
            num_embeddings, embedding_dim, padding_idx, bits)
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim, dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros(2**bits))

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits: int, sample: int = 200_000, seed: int = 0) -> CodebookEmbedding:
        from deepshrink.quantize.kmeans import kmeans_1d

        w = emb.weight.detach().float()
        out = cls(w.shape[0], w.shape[1], bits, emb.padding_idx)
        flat = w.reshape(-1).numpy()
        rng = np.random.default_rng(seed)
        fit = flat if flat.size <= sample else rng.choice(flat, sample, replace=False)
        centroids, _ = kmeans_1d(fit, 2**bits, init="linear", seed=seed)
        c = torch.as_tensor(centroids, dtype=torch.float32)
        mid = (c[1:] + c[:-1]) / 2  # nearest centroid of sorted centroids = bucket between midpoints
        out.codes.copy_(torch.bucketize(w, mid).to(torch.uint8).reshape(w.shape))
        out.codebook.copy_(torch.cat([c, c[-1:].expand(2**bits - c.numel())]) if c.numel() < 2**bits else c)
        return out

    @property
    def weight(self) -> torch.Tensor:
        return self.codebook[self.codes.long()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.codes[ids].long()]


def embedding_record(emb: nn.Module) -> dict[str, Any]:
    """JSON description of a word-embedding module (kind and sizes) for the architecture record."""
    rows, dim, pad = emb.num_embeddings, emb.embedding_dim, emb.padding_idx
    if isinstance(emb, Int8Embedding):
        return {"kind": "int8", "rows": rows, "dim": dim, "padding_idx": pad}
    if isinstance(emb, CodebookEmbedding):
        return {"kind": "codebook", "rows": rows, "dim": dim, "padding_idx": pad, "bits": emb.bits}
    if isinstance(emb, nn.Embedding):
        return {"kind": "float", "rows": rows, "dim": dim, "padding_idx": pad}
    raise ModelError(f"unknown word-embedding module {type(emb).__name__}")


def embedding_from_record(rec: dict[str, Any]) -> nn.Module:
    """An empty embedding module of the recorded kind and size."""
    try:
        kind, rows, dim, pad = rec["kind"], int(rec["rows"]), int(rec["dim"]), rec.get("padding_idx")
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"malformed embedding record {rec!r}") from None
    if not (1 <= rows <= 1 << 22 and 1 <= dim <= 1 << 16):
        raise ModelError(f"embedding record has implausible size {rows}x{dim}")
    if kind == "int8":
        return Int8Embedding(rows, dim, pad)
    if kind == "codebook":
        return CodebookEmbedding(rows, dim, int(rec.get("bits", 8)), pad)
    if kind == "float":
        return nn.Embedding(rows, dim, padding_idx=pad)
    raise ModelError(f"unknown embedding kind {kind!r}")


def compress_embedding(encoder: nn.Module, kind: Literal["int8", "codebook"] = "int8", bits: int = 8) -> nn.Module:
    """Replace ``encoder.bert.embeddings.word_embeddings`` (in place) by an int8 or codebook table."""
    if kind not in ("int8", "codebook"):
        raise ConfigError(f"embedding compression must be 'int8' or 'codebook', got {kind!r}")
    holder = getattr(getattr(encoder, "bert", encoder), "embeddings", None)
    emb = getattr(holder, "word_embeddings", None)
    if not isinstance(emb, nn.Embedding):
        raise ModelError(f"{type(encoder).__name__} has no float word-embedding table to compress")
    if kind == "int8":
        holder.word_embeddings = Int8Embedding.from_float(emb)
    elif kind == "codebook":
        holder.word_embeddings = CodebookEmbedding.from_float(emb, bits)
    else:
        raise ConfigError(f"embedding compression must be 'int8' or 'codebook', got {kind!r}")
    return encoder


def used_token_ids(tokenizer: Any, corpus: list[str], max_length: int = 512) -> torch.Tensor:
    """Sorted ids the tokenizer produces on ``corpus`` plus every special token id."""
    if not corpus:
        raise DataError("vocabulary pruning needs a non-empty corpus")
    ids: set[int] = set(int(i) for i in tokenizer.all_special_ids)
    for start in range(0, len(corpus), 256):
        enc = tokenizer(corpus[start:start + 256], truncation=True, max_length=max_length)
        for row in enc["input_ids"]:
            ids.update(int(i) for i in row)
    return torch.tensor(sorted(ids), dtype=torch.int64)


def prune_vocabulary(encoder: nn.Module, tokenizer: Any, corpus: list[str], *, max_length: int = 512) -> torch.Tensor:
    """Keep only the embedding rows of tokens ``corpus`` uses; returns the kept old ids.

    Installs ``encoder.token_map`` (old id -> new row; unseen ids -> the ``[UNK]`` row) so the tokenizer
    stays unchanged. Text with tokens outside the corpus is then embedded as if those were ``[UNK]``.
    """
    from deepshrink.transformers.model import SentenceEncoder

    if not isinstance(encoder, SentenceEncoder):
        raise ModelError(f"vocabulary pruning needs a SentenceEncoder, got {type(encoder).__name__}")
    if encoder.token_map is not None:
        raise ModelError("the vocabulary is already pruned")
    emb = encoder.bert.embeddings.word_embeddings
    if not isinstance(emb, nn.Embedding):
        raise ModelError("prune the vocabulary before compressing the embedding table")
    unk = tokenizer.unk_token_id
    if unk is None:
        raise DataError("the tokenizer has no [UNK] token to map unseen tokens to")
    keep = used_token_ids(tokenizer, corpus, max_length)
    if int(keep.max()) >= emb.num_embeddings:
        raise ModelError(f"tokenizer id {int(keep.max())} is outside the embedding table ({emb.num_embeddings} rows)")
    token_map = torch.full((emb.num_embeddings,), int((keep == unk).nonzero()[0, 0]), dtype=torch.int64)
    token_map[keep] = torch.arange(keep.numel())
    pad = emb.padding_idx
    new_pad = int(token_map[pad]) if pad is not None and bool((keep == pad).any()) else None
    new = nn.Embedding(keep.numel(), emb.embedding_dim, padding_idx=new_pad)
    with torch.no_grad():
        new.weight.copy_(emb.weight[keep])
    encoder.bert.embeddings.word_embeddings = new
    encoder.bert.config.vocab_size = keep.numel()
    encoder.register_buffer("token_map", token_map)
    return keep


def check_known(encoder: nn.Module, input_ids: torch.Tensor, unk_id: int) -> None:
    """DataError when ``input_ids`` hold tokens a pruned vocabulary maps to ``[UNK]`` (the strict option)."""
    tmap = getattr(encoder, "token_map", None)
    if tmap is None:
        return
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= len(tmap)):
        raise DataError(f"token ids must be in 0..{len(tmap) - 1} (the original vocabulary), got "
                        f"{int(input_ids.min())}..{int(input_ids.max())}")
    if not 0 <= unk_id < len(tmap):
        raise DataError(f"unk_id {unk_id} is outside the original vocabulary of {len(tmap)} ids")
    unk_row = tmap[unk_id]
    lost = input_ids[(tmap[input_ids] == unk_row) & (input_ids != unk_id)]
    if lost.numel():
        raise DataError(f"{lost.unique().numel()} token ids (e.g. {int(lost[0])}) are outside the pruned vocabulary")
