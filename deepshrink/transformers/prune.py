"""Structured pruning of BERT-family layers: whole attention heads and feed-forward neurons.

Heads: query/key/value lose the output rows of a pruned head, attention.output.dense loses the matching
input columns; the per-head size is unchanged, so BERT's ``view(..., -1, head_size)`` reshapes to the
kept head count without a config change. FFN: intermediate.dense loses output rows, output.dense the
matching input columns. Per-layer counts go into the encoder's architecture record (see
``deepshrink.transformers.model``); ``config.intermediate_size`` / ``num_attention_heads`` are updated
when all layers agree.

Importance (no labels needed): a head's score is by default its contribution, the mean L2 norm over real
tokens of its output projected by attention.output.dense (``head_contribution``, one forward per batch), or
with ``method="ablation"`` how much the sentence embedding changes (1 - mean cosine) when that head alone is
zeroed on calibration sentences (``head_importance``); an FFN neuron's score is the mean
absolute activation times the L2 norm of its output column (its average contribution to the residual).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.core.progress import track


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``idx`` along ``dim`` of the weight (0: outputs, 1: inputs)."""
    w = lin.weight.detach().index_select(dim, idx)
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if lin.bias is not None:
            out.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach().index_select(0, idx))
    return out


def _head_index(keep_heads: torch.Tensor, head_size: int) -> torch.Tensor:
    return (keep_heads.view(-1, 1) * head_size + torch.arange(head_size, device=keep_heads.device)).reshape(-1)


def _indices(keep: Any, n: int, what: str) -> torch.Tensor:
    """Sorted distinct indices as an int64 tensor (computed in Python: works for meta-device layers too)."""
    flat = keep.reshape(-1).tolist() if isinstance(keep, torch.Tensor) else list(keep)
    values = sorted({int(i) for i in flat})
    if not values or values[0] < 0 or values[-1] >= n:
        raise ConfigError(f"{what} indices must be 1..{n} distinct values in 0..{n - 1}, got {values[:8]}")
    return torch.tensor(values, dtype=torch.int64, device="cpu")


def prune_layer_heads(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the heads ``keep`` (indices) of one BERT layer, in place."""
    att = layer.attention.self
    n = att.query.out_features // att.attention_head_size
    keep = _indices(keep, n, "head")
    idx = _head_index(keep, att.attention_head_size).to(att.query.weight.device)
    for name in ("query", "key", "value"):
        setattr(att, name, _slice_linear(getattr(att, name), idx, 0))
    layer.attention.output.dense = _slice_linear(layer.attention.output.dense, idx, 1)
    att.num_attention_heads = int(keep.numel())
    att.all_head_size = int(idx.numel())


def prune_layer_ffn(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the intermediate neurons ``keep`` (indices) of one BERT layer, in place."""
    n = layer.intermediate.dense.out_features
    keep = _indices(keep, n, "FFN neuron").to(layer.intermediate.dense.weight.device)
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, keep, 0)
    layer.output.dense = _slice_linear(layer.output.dense, keep, 1)


def resize_layer(layer: nn.Module, heads: int | None, intermediate: int | None) -> None:
    """Shrink a freshly built layer to ``heads`` / ``intermediate`` (the first ones; weights come later)."""
    att = layer.attention.self
    n = att.query.out_features // att.attention_head_size
    for what, value, limit in (("heads", heads, n), ("intermediate", intermediate, layer.intermediate.dense.out_features)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit):
            raise ModelError(f"{what} must be an integer in 1..{limit}, got {value!r}")
    if heads is not None and heads != n:
        prune_layer_heads(layer, list(range(heads)))
    if intermediate is not None and intermediate != layer.intermediate.dense.out_features:
        prune_layer_ffn(layer, list(range(intermediate)))


def _sync_config(bert: nn.Module, layers: Sequence[nn.Module]) -> None:
    cfg = bert.config
    ffn = {l.intermediate.dense.out_features for l in layers}
    if len(ffn) == 1:
        cfg.intermediate_size = ffn.pop()
    cfg.num_hidden_layers = len(layers)


def _keep_count(n: int, ratio: float, round_to: int) -> int:
    keep = n - int(round(n * ratio))
    if round_to > 1:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return max(1, min(n, keep))


def _check_ratio(ratio: float, what: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{what} pruning ratio must be in [0, 1), got {ratio!r}")
    return float(ratio)


Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _token_means(encoder: nn.Module, batches: Batches, modules: Sequence[nn.Module],
                 stat: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Per module: ``stat(i, input, mask)`` (summed over batch and tokens, padding masked by ``stat``) at
    each module's input over all batches, divided by the number of real tokens."""
    sums: list[torch.Tensor | int] = [0] * len(modules)
    current: dict[str, torch.Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple) -> None:
            sums[i] = sums[i] + stat(i, args[0].detach(), current["mask"]).cpu()
        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(modules)]
    tokens = 0
    try:
        for ids, mask in batches:
            current["mask"] = mask
            encoder(ids, mask)
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return [torch.as_tensor(s) / max(tokens, 1) for s in sums]


@torch.no_grad()
def head_contribution(encoder: nn.Module, batches: Batches) -> list[torch.Tensor]:
    """Per layer, per head: mean L2 norm over real tokens of the head's output projected by
    attention.output.dense (its contribution to the residual stream); one forward per batch."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    if not batches:
        raise ConfigError("head importance needs at least one calibration batch")

    def stat(i: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        size = layers[i].attention.self.attention_head_size
        w = layers[i].attention.output.dense.weight.detach()  # [hidden, heads * size]
        b, t, _ = x.shape  # [B, T, heads * size]
        per_head = torch.einsum("bthd,ohd->btho", x.view(b, t, -1, size), w.view(w.shape[0], -1, size))
        return (per_head.norm(dim=-1) * mask.unsqueeze(-1).to(x.dtype)).sum(dim=(0, 1))

    return _token_means(encoder, batches, [l.attention.output.dense for l in layers], stat)


@torch.no_grad()
def head_importance(encoder: nn.Module, batches: Batches) -> list[torch.Tensor]:
    """Per layer, per head: 1 - mean cosine of the embedding with that head zeroed vs intact (higher = keep).

    Exact but costs one forward per head and batch; ``head_contribution`` is the one-pass proxy."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    if not batches:
        raise ConfigError("head importance needs at least one calibration batch")
    ref = [encoder(ids, mask) for ids, mask in batches]
    scores = []
    for layer in track(layers, "head importance", total=len(layers)):
        att = layer.attention.self
        size = att.attention_head_size
        n = att.query.out_features // size
        s = torch.zeros(n)
        for h in range(n):
            def zero_head(_m: nn.Module, args: tuple, h: int = h) -> tuple:
                x = args[0].clone()
                x[..., h * size:(h + 1) * size] = 0
                return (x, *args[1:])

            handle = layer.attention.output.dense.register_forward_pre_hook(zero_head)
            try:
                s[h] = _ablation(encoder, batches, ref)
            finally:
                handle.remove()
        scores.append(s)
    return scores


def _ablation(encoder: nn.Module, batches: Batches, ref: list[torch.Tensor]) -> float:
    total = 0.0
    for (ids, mask), r in zip(batches, ref):
        total += float(1 - nn.functional.cosine_similarity(encoder(ids, mask), r, dim=-1).mean())
    return total / len(batches)


@torch.no_grad()
def ffn_importance(encoder: nn.Module, batches: Batches) -> list[torch.Tensor]:
    """Per layer, per FFN neuron: mean |activation| over real tokens x L2 norm of its output column."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)

    def stat(_i: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x.abs() * mask.unsqueeze(-1).to(x.dtype)).sum(dim=(0, 1))

    means = _token_means(encoder, batches, [l.output.dense for l in layers], stat)
    return [m * l.output.dense.weight.detach().norm(dim=0).cpu() for m, l in zip(means, layers)]


@dataclass(frozen=True)
class PruneResult:
    """Kept heads / neurons per layer (original indices)."""

    heads: list[list[int]]
    ffn: list[int]


def _check_float(encoder: nn.Module, what: str) -> None:
    """ModelError when the encoder's Linear layers are already int8 codes: prune first, then quantize."""
    from deepshrink.transformers.int8 import int8_linear_names

    held = int8_linear_names(encoder) if isinstance(encoder, nn.Module) else []
    if held:
        raise ModelError(f"cannot prune {what} of an int8 encoder ({held[0]} holds int8 codes): prune the float "
                         "model first, then quantize")


def prune_heads(encoder: nn.Module, ratio: float, batches: Batches | None = None, *,
                scores: list[torch.Tensor] | None = None, scope: str = "global",
                method: str = "contribution", refit: bool = False, ridge: float = 1e-4) -> list[list[int]]:
    """Remove ``ratio`` of all attention heads (lowest importance first), at least one per layer, in place.

    ``scope="global"`` ranks heads across layers; ``"layer"`` removes the same fraction in every layer.
    ``method``: ``contribution`` (one pass, ``head_contribution``) or ``ablation`` (``head_importance``).
    ``refit=True`` then re-solves each ``attention.output.dense`` by least squares on ``batches`` so the kept
    heads reproduce the original attention output (``deepshrink.transformers.refit``).
    """
    import copy

    _check_float(encoder, "heads")
    if method not in ("contribution", "ablation"):
        raise ConfigError(f"head importance method must be 'contribution' or 'ablation', got {method!r}")
    if not isinstance(refit, bool):
        raise ConfigError(f"refit must be True or False, got {refit!r}")
    if refit and not batches:
        raise ConfigError("head pruning with refit=True needs calibration batches")
    from deepshrink.transformers.model import bert_layers
    from deepshrink.transformers.refit import check_refit_inputs, refit_attention_outputs

    ratio = _check_ratio(ratio, "head")
    layers = bert_layers(encoder)
    if scope not in ("global", "layer"):
        raise ConfigError(f"head pruning scope must be 'global' or 'layer', got {scope!r}")
    if scores is None:
        if batches is None:
            raise ConfigError("head pruning needs calibration batches or precomputed scores")
        scores = (head_contribution if method == "contribution" else head_importance)(encoder, batches)
    if len(scores) != len(layers):
        raise ConfigError(f"got head scores for {len(scores)} layers, the model has {len(layers)}")
    keep = _select(scores, ratio, scope, round_to=1)
    if refit:  # before any layer changes: a bad ridge or too little text leaves the model as it was
        widest = max(len(k) for k in keep) * layers[0].attention.self.attention_head_size
        batches = check_refit_inputs(batches, ridge, widest, "attention")
    originals = ([(copy.deepcopy(l.attention.self), copy.deepcopy(l.attention.output.dense)) for l in layers]
                 if refit else [])
    for layer, k in zip(layers, keep):
        prune_layer_heads(layer, torch.tensor(k))
    _sync_config(getattr(encoder, "bert", encoder), layers)
    if refit:
        refit_attention_outputs(encoder, batches, originals, ridge=ridge)
    return keep


def prune_ffn(encoder: nn.Module, ratio: float, batches: Batches | None = None, *,
              scores: list[torch.Tensor] | None = None, scope: str = "layer", round_to: int = 32,
              refit: bool = False, ridge: float = 1e-4) -> list[int]:
    """Remove ``ratio`` of the FFN neurons (per layer by default, multiples of ``round_to`` kept), in place.

    ``refit=True`` then re-solves each layer's down-projection by least squares on ``batches`` so the kept
    neurons reproduce the original FFN output (``deepshrink.transformers.refit``), with no training; its effect
    on all-MiniLM-L6-v2 is measured by benchmarks/bench_minilm_prune.py. ``ridge`` is used only with refit.
    """
    import copy

    from deepshrink.transformers.model import bert_layers
    from deepshrink.transformers.refit import check_refit_inputs, refit_ffn_outputs

    _check_float(encoder, "FFN neurons")

    if not isinstance(refit, bool):
        raise ConfigError(f"refit must be True or False, got {refit!r}")
    if refit and not batches:
        raise ConfigError("FFN pruning with refit=True needs calibration batches")

    ratio = _check_ratio(ratio, "FFN")
    layers = bert_layers(encoder)
    if scope not in ("global", "layer"):
        raise ConfigError(f"FFN pruning scope must be 'global' or 'layer', got {scope!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if scores is None:
        if batches is None:
            raise ConfigError("FFN pruning needs calibration batches or precomputed scores")
        scores = ffn_importance(encoder, batches)
    keep = _select(scores, ratio, scope, round_to)
    if refit:  # before any layer changes: a bad ridge or too little text leaves the model as it was
        batches = check_refit_inputs(batches, ridge, max(len(k) for k in keep), "FFN")
    originals = [(copy.deepcopy(l.intermediate), copy.deepcopy(l.output.dense)) for l in layers] if refit else []
    for layer, k in zip(layers, keep):
        prune_layer_ffn(layer, torch.tensor(k))
    _sync_config(getattr(encoder, "bert", encoder), layers)
    if refit:
        refit_ffn_outputs(encoder, batches, originals, ridge=ridge)
    return [len(k) for k in keep]


def _select(scores: list[torch.Tensor], ratio: float, scope: str, round_to: int) -> list[list[int]]:
    if scope == "layer":
        return [sorted(torch.topk(s, _keep_count(s.numel(), ratio, round_to)).indices.tolist()) for s in scores]
    flat = torch.cat(list(scores))
    total = _keep_count(flat.numel(), ratio, 1)
    threshold = torch.topk(flat, total).values.min()
    out = []
    for s in scores:
        k = int((s >= threshold).sum())
        if round_to > 1:
            k = max(round_to, int(round(k / round_to)) * round_to)
        k = max(1, min(s.numel(), k))
        out.append(sorted(torch.topk(s, k).indices.tolist()))
    return out


def structure(encoder: nn.Module) -> dict[str, Any]:
    """Heads and FFN width per layer (for reports)."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    return {"heads": [l.attention.self.query.out_features // l.attention.self.attention_head_size for l in layers],
            "ffn": [l.intermediate.dense.out_features for l in layers]}
