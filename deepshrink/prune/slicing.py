"""Slicing layers in place for structured pruning: which index set each member keeps, on which axis.

Every function here takes indices that were already chosen (kept channels, kept heads) and rewrites
the tensors and size attributes of one module, so the result stays a plain module of the same class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ModelError
from deepshrink.prune.graph import Member, Seg
from deepshrink.prune.importance import Importance


def seg_index(segs: Sequence[Seg], keep: Mapping[int, torch.Tensor], root_of: Any) -> torch.Tensor:
    """Kept positions along a member's axis that spans ``segs`` (several groups after a concatenation,
    ``rep`` positions per channel after a flatten)."""
    idx, off = [], 0
    for s in segs:
        k = keep.get(root_of(s.gid))
        k = torch.arange(s.length) if k is None else k
        pos = (k.view(-1, 1) * s.rep + torch.arange(s.rep).view(1, -1)).flatten()
        idx.append(pos + off)
        off += s.length * s.rep
    return torch.cat(idx)


def select(scores: torch.Tensor, n: int, blocks: int = 1) -> torch.Tensor:
    """Sorted indices of the ``n`` best channels; with ``blocks`` > 1 the same number from each of the
    ``blocks`` contiguous blocks (grouped convolutions keep their block structure)."""
    if blocks <= 1:
        return scores.topk(n).indices.sort().values
    size, per = scores.numel() // blocks, n // blocks
    local = scores.view(blocks, size).topk(per, dim=1).indices.sort(dim=1).values
    return (local + torch.arange(blocks).view(-1, 1) * size).flatten()


def slice_param(mod: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    """Replace ``mod.name`` by its ``idx`` slice along ``dim`` (keeps Parameter-ness and requires_grad)."""
    p = getattr(mod, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, idx.to(p.device)).clone()
    if isinstance(p, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(mod, name, new)


def _grouped_in(mod: nn.modules.conv._ConvNd, idx: torch.Tensor) -> None:
    """Keep input channels ``idx`` (the same count in every group) of a grouped convolution."""
    g, w = mod.groups, mod.weight
    per_in = mod.in_channels // g
    local = (idx.view(g, -1) - torch.arange(g).view(-1, 1) * per_in).to(w.device)
    rows = local.repeat_interleave(mod.out_channels // g, dim=0)  # (out, kept per group)
    new = w.detach().gather(1, rows.view(*rows.shape, *([1] * (w.dim() - 2))).expand(
        -1, -1, *w.shape[2:])).clone()
    mod.weight = nn.Parameter(new, requires_grad=w.requires_grad)
    mod.in_channels = int(idx.numel())


def apply_member(root: nn.Module, mem: Member, idx: torch.Tensor) -> None:
    """Slice the tensors of one member of a channel group to the kept positions ``idx``."""
    n = int(idx.numel())
    if mem.role == "param":
        owner, _, attr = mem.module.rpartition(".")
        slice_param(root.get_submodule(owner) if owner else root, attr, mem.axis, idx)
        return
    mod = root.get_submodule(mem.module)
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mem.role == "out":
            slice_param(mod, "weight", 0, idx)
            slice_param(mod, "bias", 0, idx)
            mod.out_channels = n
        elif mem.role == "in" and mod.groups > 1:
            _grouped_in(mod, idx)
        elif mem.role == "in":
            slice_param(mod, "weight", 1, idx)
            mod.in_channels = n
        else:  # depthwise
            slice_param(mod, "weight", 0, idx)
            slice_param(mod, "bias", 0, idx)
            mod.in_channels = mod.out_channels = mod.groups = n
    elif isinstance(mod, nn.Linear):
        if mem.role == "out":
            slice_param(mod, "weight", 0, idx)
            slice_param(mod, "bias", 0, idx)
            mod.out_features = n
        else:
            slice_param(mod, "weight", 1, idx)
            mod.in_features = n
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        for p in ("weight", "bias", "running_mean", "running_var"):
            slice_param(mod, p, 0, idx)
        mod.num_features = n
    elif isinstance(mod, nn.LayerNorm):
        slice_param(mod, "weight", 0, idx)
        slice_param(mod, "bias", 0, idx)
        mod.normalized_shape = (n,)
    elif isinstance(mod, nn.Embedding):
        slice_param(mod, "weight", 1, idx)
        mod.embedding_dim = n
    elif isinstance(mod, nn.MultiheadAttention):
        if mem.role == "in":  # embedding columns of the packed q/k/v projection
            slice_param(mod, "in_proj_weight", 1, idx)
        else:
            slice_param(mod.out_proj, "weight", 0, idx)
            slice_param(mod.out_proj, "bias", 0, idx)
            mod.out_proj.out_features = n
    else:
        raise ModelError(f"cannot slice {type(mod).__name__} {mem.module!r}")


def head_scores(name: str, attn: nn.Module, imp: Importance) -> torch.Tensor:
    """One score per head of a fused-qkv attention block: q/k/v rows plus proj columns, each normalised."""
    h, d = attn.heads, attn.head_dim
    q = imp.scores(f"{name}.qkv", attn.qkv).float().sum(1).view(3, h, d).sum((0, 2))
    p = imp.scores(f"{name}.proj", attn.proj).float().sum(0).view(h, d).sum(1)
    return q / q.mean().clamp_min(1e-12) + p / p.mean().clamp_min(1e-12)


def prune_heads(attn: nn.Module, keep: torch.Tensor) -> None:
    """Keep heads ``keep`` of a fused-qkv attention block (``heads``, ``head_dim``, ``qkv``, ``proj``)."""
    h, d = attn.heads, attn.head_dim
    rows = (keep.view(1, -1, 1) * d + torch.arange(d).view(1, 1, -1) + torch.arange(3).view(3, 1, 1) * h * d)
    apply_member(attn, Member("qkv", "out", ()), rows.flatten())
    cols = (keep.view(-1, 1) * d + torch.arange(d).view(1, -1)).flatten()
    apply_member(attn, Member("proj", "in", ()), cols)
    attn.heads = int(keep.numel())


def mha_head_scores(mha: nn.MultiheadAttention, p: int = 2) -> torch.Tensor:
    """Per-head magnitude of an nn.MultiheadAttention: its q/k/v rows and out_proj columns, normalised."""
    h, d = mha.num_heads, mha.head_dim
    w = mha.in_proj_weight.detach().abs().float().pow(p)
    q = w.sum(1).view(3, h, d).sum((0, 2))
    o = mha.out_proj.weight.detach().abs().float().pow(p).sum(0).view(h, d).sum(1)
    return q / q.mean().clamp_min(1e-12) + o / o.mean().clamp_min(1e-12)


def prune_mha_heads(mha: nn.MultiheadAttention, keep: torch.Tensor) -> None:
    """Keep heads ``keep`` of an nn.MultiheadAttention whose embedding columns were already sliced to
    ``len(keep) x head_dim`` (torch ties the inner width to the embedding width)."""
    h, d = mha.num_heads, mha.head_dim
    rows = (keep.view(1, -1, 1) * d + torch.arange(d).view(1, 1, -1)
            + torch.arange(3).view(3, 1, 1) * h * d).flatten()
    slice_param(mha, "in_proj_weight", 0, rows)
    slice_param(mha, "in_proj_bias", 0, rows)
    cols = (keep.view(-1, 1) * d + torch.arange(d).view(1, -1)).flatten()
    for name in ("bias_k", "bias_v"):
        slice_param(mha, name, 2, cols)
    slice_param(mha.out_proj, "weight", 1, cols)
    e = int(cols.numel())
    mha.out_proj.in_features = e
    mha.embed_dim = mha.kdim = mha.vdim = e
    mha.num_heads = int(keep.numel())
