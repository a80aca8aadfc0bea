"""Unstructured and N:M pruning: criterion x scope x schedule, as masks that survive training.

``unstructured(model, 0.92, importance="taylor", scope="global", schedule="iterative", train=cfg,
data=train_set)`` attaches masks (parametrizations) in place, retrains between steps and returns a
:class:`PruneReport`; ``permanent=True`` squashes the masks into plain zeroed weights afterwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepshrink.core.errors import ConfigError
from deepshrink.prune.importance import Importance, get_importance
from deepshrink.prune.masks import get_mask, remove_masks, set_mask
from deepshrink.prune.schedules import Lasso, LossFn, Schedule, get_schedule
from deepshrink.prune.select import Pattern, resolve_overrides, select_layers


@dataclass
class LayerRow:
    name: str
    numel: int
    kept: int
    sparsity: float
    pattern: str = ""


@dataclass
class PruneReport:
    """What was pruned: per-layer rows, layers left intact with the reason, the step targets, notes."""

    rows: list[LayerRow]
    skipped: dict[str, str] = field(default_factory=dict)
    steps: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        total = sum(r.numel for r in self.rows)
        return 1.0 - sum(r.kept for r in self.rows) / max(1, total)


def check_ratio(value: float, what: str = "sparsity") -> float:
    """Ratios live in [0, 1): pruning everything is refused."""
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or math.isnan(value) or not 0 <= value < 1:
        raise ConfigError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive weights along the input dim."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M pattern needs integers 0 < N < M, got {n}:{m}")
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ConfigError(f"{rows.shape[1]} inputs per output are not a multiple of M={m}")
    groups = rows.reshape(-1, m)
    idx = groups.topk(n, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, idx, 1.0)
    return mask.reshape(scores.shape)


def _topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    keep = max(1, min(keep, scores.numel()))
    flat = scores.flatten()
    mask = torch.zeros_like(flat)
    mask[flat.topk(keep, sorted=False).indices] = 1.0
    return mask.view_as(scores)


def _masked_scores(name: str, module: nn.Module, imp: Importance) -> torch.Tensor:
    # scores gathered during training (Taylor) live on the training device; the layer may be back on the CPU
    s = imp.scores(name, module).float().to(module.weight.device).clone()
    if s.shape != module.weight.shape:
        raise ConfigError(f"importance {imp.name!r} returned shape {tuple(s.shape)} for layer {name!r}, "
                          f"expected {tuple(module.weight.shape)}")
    current = get_mask(module)
    if current is not None:  # monotone: pruned stays pruned
        s = torch.where(current > 0, s, torch.full_like(s, -math.inf))
    return s


def compute_masks(selected: Mapping[str, nn.Module], imp: Importance, ratios: Mapping[str, float],
                  scope: str, threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Masks for the selected layers: per-layer ratios, one global ranking, or a score threshold."""
    scores = {n: _masked_scores(n, m, imp) for n, m in selected.items()}
    if threshold is not None:
        out = {}
        for n, s in scores.items():
            mask = (s >= threshold).float()
            out[n] = mask if mask.sum() > 0 else _topk_mask(s, 1)
        return out
    if scope == "layer":
        return {n: _topk_mask(s, s.numel() - int(round(ratios[n] * s.numel()))) for n, s in scores.items()}
    if scope == "global":
        target = next(iter(ratios.values()))
        allv = torch.cat([s.flatten() for s in scores.values()])
        k_prune = int(round(target * allv.numel()))
        if k_prune == 0:
            return {n: (s > -math.inf).float() for n, s in scores.items()}
        cut = allv.kthvalue(k_prune).values
        out = {}
        for n, s in scores.items():
            mask = (s > cut).float()
            out[n] = mask if mask.sum() > 0 else _topk_mask(s, 1)
        return out
    raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")


def _loader(data: Any, batch_size: int = 128) -> Iterable[Any] | None:
    if data is None or isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def unstructured(
    model: nn.Module,
    sparsity: float = 0.9,
    *,
    importance: str | Importance = "l1",
    scope: str = "layer",
    layers: Sequence[Pattern] | None = None,
    exclude: Sequence[Pattern] = (),
    exclude_first: bool = False,
    exclude_last: bool = False,
    overrides: Mapping[Pattern, float] | None = None,
    nm: tuple[int, int] | None = None,
    threshold: float | None = None,
    schedule: str | Schedule = "oneshot",
    schedule_kwargs: Mapping[str, Any] | None = None,
    train: Any = None,
    data: Any = None,
    calibration: Any = None,
    permanent: bool = False,
    importance_kwargs: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Prune ``model`` in place with masks. ``train`` is a TrainConfig used between schedule steps on
    ``data`` (a Dataset); ``calibration`` (batches or a Dataset; default ``data``) feeds data-driven
    criteria. ``nm=(2, 4)`` gives semi-structured masks (no CPU speedup: dense kernels still run)."""
    check_ratio(sparsity)
    for pat, v in (overrides or {}).items():
        check_ratio(v, f"override {pat!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    if scope == "global" and overrides:
        raise ConfigError("per-layer overrides need scope='layer'")
    selected = select_layers(model, layers, exclude=exclude, exclude_first=exclude_first,
                             exclude_last=exclude_last)
    ratios = resolve_overrides(selected, overrides, sparsity)
    imp = get_importance(importance, **dict(importance_kwargs or {}))
    calib = _loader(calibration if calibration is not None else data)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if nm is not None:
        n, m = nm
        for name, mod in list(selected.items()):
            if mod.weight[0].numel() % m:
                skipped[name] = f"{mod.weight[0].numel()} inputs per output are not a multiple of {m}"
                selected.pop(name)
        if not selected:
            raise ConfigError(f"no selected layer fits the {n}:{m} pattern")
        notes.append(f"{n}:{m} semi-structured masks: stored sparse, but no CPU speedup is expected "
                     "(dense kernels still multiply the zeros; only sparse tensor cores exploit N:M)")
    kwargs = dict(schedule_kwargs or {})
    if schedule == "lasso":
        kwargs.setdefault("layers", selected)
    sched = get_schedule(schedule, **kwargs)
    if isinstance(sched, Lasso) and not sched.layers:
        sched.layers = selected

    def prune(s: float) -> None:
        imp.prepare(model, selected, calib)
        if nm is not None:
            masks = {name: nm_mask(_masked_scores(name, mod, imp), *nm) for name, mod in selected.items()}
        else:
            frac = s / sparsity if sparsity > 0 else 0.0
            step_ratios = {name: r * frac for name, r in ratios.items()}
            masks = compute_masks(selected, imp, step_ratios, scope, threshold)
        for name, mod in selected.items():
            set_mask(mod, masks[name])

    def fit(loss_fn: LossFn | None) -> None:
        from deepshrink.train import Trainer

        with imp.observe(model, selected):  # criteria that score from the retraining steps hook in here
            Trainer(model, train, loss_fn=loss_fn, progress=False, description="prune-retrain").fit(data)

    if train is not None and data is None:
        raise ConfigError("retraining between pruning steps needs data")
    steps = sched.run(sparsity, prune, fit if train is not None else None)
    rows = []
    for name, mod in selected.items():
        w = mod.weight
        kept = int((w != 0).sum())
        rows.append(LayerRow(name, w.numel(), kept, 1 - kept / w.numel(), f"{nm[0]}:{nm[1]}" if nm else ""))
    if permanent:
        remove_masks(model)
    return PruneReport(rows, skipped, steps, notes)


def sensitivity_scan(model: nn.Module, evaluate_fn: Callable[[nn.Module], float], *,
                     sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95), tolerance: float = 0.01,
                     importance: str | Importance = "l1", layers: Sequence[Pattern] | None = None,
                     calibration: Any = None) -> dict[str, float]:
    """Prune each layer alone at each sparsity (on a copy) and return, per layer, the largest sparsity whose
    score (``evaluate_fn``, higher is better) stays within ``tolerance`` of the unpruned model's; usable as
    ``overrides`` of :func:`unstructured`."""
    for s in sparsities:
        check_ratio(s)
    base = evaluate_fn(model)
    chosen: dict[str, float] = {}
    for name in select_layers(model, layers):
        best = 0.0
        for s in sorted(sparsities):
            trial = copy.deepcopy(model)
            unstructured(trial, s, importance=importance, layers=[name], calibration=calibration)
            if base - evaluate_fn(trial) <= tolerance:
                best = s
            else:
                break
        chosen[name] = best
    return chosen
