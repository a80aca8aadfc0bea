"""Structured pruning: physically remove channels, neurons and attention heads.

``structured(model, example_inputs, ratio=0.5)`` traces a copy of ``model`` (torch.fx), groups coupled
channels (:mod:`deepshrink.prune.graph`), scores each group with an :class:`Importance` summed over its
members (each member's scores normalised by their mean, batch/layer-norm scales included), keeps the
best ``1 - ratio`` of every group (rounded up to a multiple of ``round_to``, of grouped-conv groups and of
attention head widths) and slices the tensors (:mod:`deepshrink.prune.slicing`). The result is a plain
``nn.Module`` of the same classes with smaller tensors; groups that cannot be pruned safely are left
intact and listed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.models.zoo import ARCH_ATTR, arch_record
from deepshrink.prune.engine import _loader, check_ratio
from deepshrink.prune.graph import ChannelGraph, Seg, build_graph
from deepshrink.prune.importance import Importance, _HookedImportance, get_importance
from deepshrink.prune.resize import record_resized
from deepshrink.prune.slicing import (apply_member, head_scores, mha_head_scores, prune_heads, prune_mha_heads,
                                      seg_index, select)
from deepshrink.prune.select import Pattern, matches


@dataclass
class GroupRow:
    name: str  # the group's first producer
    modules: list[str]
    before: int
    after: int


@dataclass
class StructuredReport:
    """Kept/removed channels per group, heads per attention block, and everything left intact with why."""

    groups: list[GroupRow] = field(default_factory=list)
    heads: list[GroupRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0


def _weight_layers(model: nn.Module, graph: ChannelGraph, norms: bool = False) -> dict[str, nn.Module]:
    """The scored members: convs and linears, plus batch norms (their scale) when ``norms``."""
    names = {m.module for m in graph.members if m.role != "param"}
    kinds: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)
    if norms:
        kinds = (*kinds, *NORMS)
    out = {n: model.get_submodule(n) for n in sorted(names)}
    return {n: m for n, m in out.items() if isinstance(m, kinds) and getattr(m, "weight", None) is not None}


def _reduce(scores: torch.Tensor, dim: int) -> torch.Tensor:
    return scores.transpose(0, dim).reshape(scores.shape[dim], -1).sum(1)


def _split(vec: torch.Tensor, segs: Sequence[Seg], root_of: Any) -> dict[int, torch.Tensor]:
    """Per-channel contributions of a member's per-position vector to each group it spans."""
    out: dict[int, torch.Tensor] = {}
    off = 0
    for s in segs:
        part = vec[off:off + s.length * s.rep].view(s.length, s.rep).sum(1)
        off += s.length * s.rep
        r = root_of(s.gid)
        out[r] = out.get(r, 0) + part
    return out


AGGREGATES = ("normalized", "sum")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def group_scores(model: nn.Module, graph: ChannelGraph, imp: Importance, *, aggregate: str = "normalized",
                 norms: bool = True) -> dict[int, torch.Tensor]:
    """One score per channel of every free group, from its members' per-channel scores.

    ``aggregate="sum"`` adds the raw member scores (for L2: the squared norm of everything the channel
    owns, across the whole group), so a member with larger weights weighs more; ``"normalized"`` divides
    each member's scores by their mean first (every member counts equally). ``norms`` also scores batch
    norms by their scale (|gamma|^p for magnitude criteria)."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    layers = _weight_layers(model, graph, norms)
    free = graph.groups()
    totals: dict[int, torch.Tensor] = {g: torch.zeros(graph.lengths[g]) for g in free}
    for mem in graph.members:
        mod = layers.get(mem.module)
        if mod is None:
            continue
        if isinstance(mod, NORMS):
            vec = bn_scores(mem.module, mod, imp)
            if vec is None:
                continue
        else:
            w = imp.scores(mem.module, mod).float()
            if mem.role == "out":
                vec = imp.channel_scores(mem.module, mod)
                vec = _reduce(w, 0) if vec is None else vec.float().flatten()
            elif mem.role == "chan":
                vec = _reduce(w, 0)
            elif isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1:
                continue  # grouped: the weight's input axis is per group; the producer scores them
            else:
                vec = _reduce(w, 1)
        for r, part in _split(vec, mem.segs, graph.find).items():
            if r in totals and part.numel() == totals[r].numel():
                mean = part.mean()
                totals[r] += part / mean if aggregate == "normalized" and mean > 0 else part
    return totals


def bn_scores(name: str, bn: nn.Module, imp: Importance) -> torch.Tensor | None:
    """A batch norm's per-channel scores (its scale), or None for criteria that measure activations
    (those already score the producer's output channels)."""
    if getattr(imp, "channel_scores", None) is not None and isinstance(imp, _HookedImportance):
        return None
    try:
        return imp.scores(name, bn).float().flatten()
    except ConfigError:
        return None


def _keep_count(n: int, ratio: float, round_to: int, must: int = 1) -> int:
    """Channels kept of ``n``: ``n - floor(ratio n)`` rounded up to a multiple of ``round_to`` and of
    ``must`` (grouped-conv groups, attention head width); ``must`` alone when both would exceed n."""
    keep = max(1, n - math.floor(ratio * n))
    for step in (math.lcm(round_to, must), must):
        k = math.ceil(keep / step) * step
        if k <= n:
            return k
    return n


def _must(graph: ChannelGraph, g: int) -> int:
    blocks, multiple = graph.constraint(g)
    return math.lcm(blocks, multiple)


def _ratio_for(names: Sequence[str], ratio: float | Mapping[Pattern, float],
               named: Mapping[str, nn.Module] | None = None) -> float:
    """The ratio of a group whose producers are ``names``: the last ``ratio`` pattern (a glob, ``re:<regex>``
    or a module type, as ``ignore``) that matches one of them, else ``"*"``."""
    if not isinstance(ratio, Mapping):
        return ratio
    value = ratio.get("*", 0.0)
    for pat, r in ratio.items():
        if pat != "*" and any(matches(pat, n, (named or {}).get(n)) for n in names):
            value = r
    return value


def _tied_params(model: nn.Module) -> list[list[tuple[str, str]]]:
    """(module, attribute) pairs sharing one Parameter object (e.g. an embedding tied to the output head)."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for mod_name, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((mod_name, attr))
    return [o for o in owners.values() if len(o) > 1]


def _retie(model: nn.Module, tied: list[list[tuple[str, str]]]) -> None:
    """Make tied parameters one object again after slicing (each owner's slice was a new Parameter). Owners
    cut differently cannot share a tensor: a ModelError rather than a silently untied model."""
    for owners in tied:
        first = getattr(model.get_submodule(owners[0][0]), owners[0][1])
        for mod_name, attr in owners[1:]:
            other = getattr(model.get_submodule(mod_name), attr)
            if other is first:
                continue
            if other.shape != first.shape or not torch.equal(other, first):
                raise ModelError(f"{owners[0][0]}.{owners[0][1]} and {mod_name}.{attr} share one weight, which "
                                 "pruning would cut differently; exclude one of them (ignore=...)")
            setattr(model.get_submodule(mod_name), attr, first)


def _check_ratio_patterns(ratio: Mapping[Pattern, float], named: Mapping[str, nn.Module]) -> None:
    for pat in ratio:
        if pat != "*" and not any(matches(pat, n, m) for n, m in named.items() if n):
            raise ConfigError(f"ratio pattern {pat!r} matches no layer")


def structured_with_report(
    model: nn.Module, example_inputs: Any, *, ratio: float | Mapping[str, float] = 0.5,
    importance: str | Importance = "l2", ignore: Sequence[Pattern] = (), round_to: int = 1,
    global_scope: bool = False, heads: bool = True, calibration: Any = None,
    importance_kwargs: Mapping[str, Any] | None = None, aggregate: str = "normalized", norms: bool = True,
) -> tuple[nn.Module, StructuredReport]:
    """:func:`structured`, also returning the :class:`StructuredReport`."""
    ratios = ratio.values() if isinstance(ratio, Mapping) else [ratio]
    for r in ratios:
        check_ratio(r, "structured ratio")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be an integer >= 1, got {round_to!r}")
    for _, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            raise ModelError("model still carries masks/parametrizations; call remove_masks() first")
    if isinstance(ratio, Mapping):
        _check_ratio_patterns(ratio, dict(model.named_modules()))
    pruned = copy.deepcopy(model).eval()
    gm, graph = build_graph(pruned, example_inputs)
    named = dict(pruned.named_modules())
    for pat in ignore:
        hit = [n for n, m in named.items() if n and matches(pat, n, m)]
        if not hit:
            raise ConfigError(f"ignore pattern {pat!r} matches no layer")
        for mem in graph.members:
            if mem.module in hit and mem.role == "out":
                graph.block(mem.segs, f"{mem.module}: ignored by the user")
    imp = get_importance(importance, **dict(importance_kwargs or {}))
    layers = _weight_layers(pruned, graph, norms and not isinstance(imp, _HookedImportance))
    for name in graph.attention:
        attn = pruned.get_submodule(name)
        layers[f"{name}.qkv"], layers[f"{name}.proj"] = attn.qkv, attn.proj
    imp.prepare(pruned, layers, _loader(calibration))
    report = StructuredReport(params_before=sum(p.numel() for p in model.parameters()))
    free = graph.groups()
    scores = group_scores(pruned, graph, imp, aggregate=aggregate, norms=norms)
    keep: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    producers = {g: [m.module for m in ms if m.role == "out"] for g, ms in free.items()}
    if global_scope:
        target = _ratio_for([], ratio) if isinstance(ratio, Mapping) else ratio
        normed = {g: s / s.mean().clamp_min(1e-12) for g, s in scores.items()}
        allv = torch.cat(list(normed.values())) if normed else torch.zeros(0)
        k = int(math.floor(target * allv.numel()))
        cut = allv.kthvalue(k).values if k > 0 else -math.inf
        for g, s in normed.items():
            n = int((s > cut).sum())
            counts[g] = _keep_count(len(s), 1 - max(n, 1) / len(s), round_to, _must(graph, g))
    else:
        for g in free:
            counts[g] = _keep_count(graph.lengths[g], _ratio_for(producers[g], ratio, named), round_to,
                                    _must(graph, g))
    for g, n in counts.items():
        if n < 1:
            raise ModelError(f"pruning would leave {producers[g][0]} with zero channels")
        keep[g] = select(scores[g], n, graph.constraint(g)[0])
        mods = sorted({m.module for m in free[g]})
        report.groups.append(GroupRow(producers[g][0], mods, graph.lengths[g], n))
    tied = _tied_params(pruned)
    for mem in graph.members:
        roots = {graph.find(s.gid) for s in mem.segs}
        if not roots & set(keep):
            continue
        if mem.role == "out":
            idx = keep[graph.find(mem.segs[0].gid)]
        else:
            idx = seg_index(mem.segs, keep, graph.find)
        apply_member(pruned, mem, idx)
    _retie(pruned, tied)
    if heads:
        for name in graph.attention:
            attn = pruned.get_submodule(name)
            r = _ratio_for([name], ratio, named)
            n = attn.heads - math.floor(r * attn.heads)
            if n < attn.heads:
                hk = head_scores(name, attn, imp).topk(n).indices.sort().values
                report.heads.append(GroupRow(name, [name], attn.heads, n))
                prune_heads(attn, hk)
    for name in graph.mha:
        mha = pruned.get_submodule(name)
        n = mha.in_proj_weight.shape[1] // mha.head_dim
        if n < mha.num_heads:
            hk = mha_head_scores(mha).topk(n).indices.sort().values
            report.heads.append(GroupRow(name, [name], mha.num_heads, n))
            prune_mha_heads(mha, hk)
    for g, reason in graph.blocked.items():
        report.skipped.setdefault(reason.split(":")[0], reason)
    report.skipped.update({k: v for k, v in graph.notes.items() if k not in report.skipped})
    report.params_after = sum(p.numel() for p in pruned.parameters())
    spec = arch_record(model)  # the sizes hold after the substitutions recorded so far (factorize can follow)
    setattr(pruned, ARCH_ATTR, {**spec, "resized": record_resized(pruned),
                                "resized_at": len(spec.get("transforms", []))})
    was_training = model.training
    try:
        with torch.no_grad():
            example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            out_before, out_after = model.eval()(*example), pruned(*example)
    except RuntimeError as exc:
        raise ModelError(f"pruned model fails on the example input: {str(exc).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    if getattr(out_before, "shape", None) != getattr(out_after, "shape", None):
        raise ModelError("pruning changed the output shape; refusing to return a wrong model")
    return pruned, report


def structured(model: nn.Module, example_inputs: Any, *, ratio: float | Mapping[str, float] = 0.5,
               importance: str | Importance = "l2", ignore: Sequence[Pattern] = (), round_to: int = 1,
               **kwargs: Any) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group (and attention heads); ``model`` is not
    modified. ``ratio`` may map module-name globs to ratios (``"*"`` the default). ``ignore`` keeps the
    matching layers' outputs intact. Returns a plain ``nn.Module`` with smaller tensors."""
    return structured_with_report(model, example_inputs, ratio=ratio, importance=importance, ignore=ignore,
                                  round_to=round_to, **kwargs)[0]
