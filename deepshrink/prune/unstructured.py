"""Unstructured magnitude pruning: per-layer masks from a kept fraction or a std-based threshold."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.prune.masks import get_mask, set_mask


def check_keep(keep: float, where: str) -> None:
    if not (0.0 < keep <= 1.0) or math.isnan(keep):
        raise ConfigError(f"{where}: kept fraction must be in (0, 1], got {keep}")


def magnitude_mask(weight: torch.Tensor, keep: float, *, current: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``keep`` fraction of entries with the largest |w| (at least one), among those still alive."""
    check_keep(keep, "magnitude_mask")
    scores = weight.detach().abs().flatten().float()
    if current is not None:
        scores = torch.where(current.flatten() > 0, scores, torch.full_like(scores, -1.0))
    n_keep = max(1, int(round(keep * scores.numel())))
    idx = torch.topk(scores, n_keep, sorted=False).indices
    mask = torch.zeros_like(scores)
    mask[idx] = 1.0
    return mask.view_as(weight)


def std_threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Deep Compression's rule: prune |w| below ``quality`` x std of the layer's weights."""
    if not (quality >= 0) or math.isinf(quality):
        raise ConfigError(f"std_threshold_mask: quality must be a finite number >= 0, got {quality}")
    w = weight.detach().float()
    mask = (w.abs() > quality * w.std()).float()
    if mask.sum() == 0:
        raise ConfigError(f"quality {quality} would prune every weight of the layer; use a smaller value")
    return mask


def prune_layer(module: nn.Module, keep: float, name: str = "weight") -> torch.Tensor:
    """Tighten ``module``'s mask so that ``keep`` of all its entries survive (monotone: pruned stays pruned)."""
    mask = magnitude_mask(getattr(module, name), keep, current=get_mask(module, name))
    set_mask(module, mask, name)
    return mask


def sparsity(t: torch.Tensor) -> float:
    return 1.0 - float((t != 0).sum()) / max(1, t.numel())
