"""Record and replay the sizes of a structurally pruned zoo model, for pickle-free artifacts.

``record_resized(model)`` lists the size attributes of every resizable layer (JSON); the artifact loader
rebuilds the zoo model and calls ``apply_resized(model, record)``, which re-allocates those layers at the
recorded (never larger) sizes before the state dict is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ModelError
from deepshrink.prune.graph import is_attention

MAX_ENTRIES = 4096
PARAM_PREFIX = "param:"


def _attrs(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return {"num_features": m.num_features}
    if isinstance(m, nn.Embedding):
        return {"embedding_dim": m.embedding_dim}
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return {"normalized_shape": m.normalized_shape[0]}
    if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
        return {"embed_dim": m.embed_dim, "num_heads": m.num_heads}
    if is_attention(m):
        return {"heads": m.heads}
    return None


def _free_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters owned directly by modules whose sizes are not described by ``_attrs`` (class tokens,
    position tables): structured pruning may slice them along the channel axis."""
    out = {}
    for name, m in model.named_modules():
        if _attrs(m) is not None or isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue
        for pname, p in m.named_parameters(recurse=False):
            out[f"{name}.{pname}" if name else pname] = p
    return out


def record_resized(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Size attributes of every resizable module, by dotted name."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        a = _attrs(m)
        if name and a is not None:
            out[name] = a
    for name, p in _free_params(model).items():
        out[PARAM_PREFIX + name] = {"shape": list(p.shape)}
    return out


def _new(p: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if p is None:
        return None
    t = torch.zeros(shape, dtype=p.dtype, device=p.device)
    return nn.Parameter(t, requires_grad=p.requires_grad) if isinstance(p, nn.Parameter) else t


def _int(entry: dict[str, Any], key: str, current: int, where: str) -> int:
    v = entry.get(key, current)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= current:
        raise ModelError(f"{where}: {key} must be an integer in 1..{current}, got {v!r}")
    return v


def apply_resized(model: nn.Module, record: Any) -> nn.Module:
    """Shrink the layers of a freshly built model to the recorded sizes (in place; returns it)."""
    if not isinstance(record, dict) or len(record) > MAX_ENTRIES:
        raise ModelError("resized-layer record must be a mapping of at most "
                         f"{MAX_ENTRIES} entries")
    modules = dict(model.named_modules())
    free = _free_params(model)
    for name, entry in record.items():
        if isinstance(name, str) and name.startswith(PARAM_PREFIX):
            _resize_param(model, free, name[len(PARAM_PREFIX):], entry)
            continue
        m = modules.get(name)
        if m is None or not isinstance(entry, dict) or _attrs(m) is None:
            raise ModelError(f"resized-layer record names unknown or unsupported module {name!r}")
        cur = _attrs(m)
        if set(entry) - set(cur):
            raise ModelError(f"{name}: unknown size attributes {sorted(set(entry) - set(cur))}")
        new = {k: _int(entry, k, v, name) for k, v in cur.items()}
        if isinstance(m, nn.modules.conv._ConvNd):
            cin, cout, g = new["in_channels"], new["out_channels"], new["groups"]
            if cin % g or cout % g:
                raise ModelError(f"{name}: channels {cin}/{cout} not divisible by groups {g}")
            m.weight = _new(m.weight, (cout, cin // g, *m.kernel_size))
            m.bias = _new(m.bias, (cout,))
            m.in_channels, m.out_channels, m.groups = cin, cout, g
        elif isinstance(m, nn.Linear):
            m.weight = _new(m.weight, (new["out_features"], new["in_features"]))
            m.bias = _new(m.bias, (new["out_features"],))
            m.in_features, m.out_features = new["in_features"], new["out_features"]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = new["num_features"]
            for p in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, p, None) is not None:
                    setattr(m, p, _new(getattr(m, p), (n,)))
            m.num_features = n
        elif isinstance(m, nn.Embedding):
            m.weight = _new(m.weight, (m.num_embeddings, new["embedding_dim"]))
            m.embedding_dim = new["embedding_dim"]
        elif isinstance(m, nn.LayerNorm):
            n = new["normalized_shape"]
            m.weight, m.bias = _new(m.weight, (n,)), _new(m.bias, (n,))
            m.normalized_shape = (n,)
        elif isinstance(m, nn.MultiheadAttention):
            _resize_mha(m, new["embed_dim"], new["num_heads"], name)
        else:
            m.heads = new["heads"]
    return model


def _resize_mha(m: nn.MultiheadAttention, e: int, heads: int, where: str) -> None:
    if e != heads * m.head_dim:
        raise ModelError(f"{where}: embed_dim {e} is not num_heads {heads} x head_dim {m.head_dim}")
    m.in_proj_weight = _new(m.in_proj_weight, (3 * e, e))
    m.in_proj_bias = _new(m.in_proj_bias, (3 * e,))
    for b in ("bias_k", "bias_v"):
        if getattr(m, b, None) is not None:
            setattr(m, b, _new(getattr(m, b), (1, 1, e)))
    m.out_proj.weight = _new(m.out_proj.weight, (e, e))
    m.out_proj.bias = _new(m.out_proj.bias, (e,))
    m.out_proj.in_features = m.out_proj.out_features = e
    m.embed_dim = m.kdim = m.vdim = e
    m.num_heads = heads


def _resize_param(model: nn.Module, free: dict[str, nn.Parameter], name: str, entry: Any) -> None:
    p = free.get(name)
    shape = entry.get("shape") if isinstance(entry, dict) and set(entry) == {"shape"} else None
    if p is None or not isinstance(shape, list) or len(shape) != p.dim() or any(
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= c for v, c in zip(shape, p.shape)):
        raise ModelError(f"resized-layer record: bad entry for parameter {name!r}")
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, _new(p, tuple(shape)))
