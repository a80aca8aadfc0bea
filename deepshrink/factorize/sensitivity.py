"""Rank selection by a sensitivity scan: the smallest rank whose factorization (before any
fine-tuning) keeps a score within a tolerance of the original model's."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize.lowrank import FactorSpec, Method, factorize_layer
from deepshrink.factorize.transforms import get_module

Score = Callable[[nn.Module], float]


@dataclass(frozen=True)
class ScanResult:
    """Scores per tried rank (higher is better), the original's score and the chosen rank."""

    layer: str
    baseline: float
    scores: dict[int, float]
    chosen: int


def sensitivity_scan(model: nn.Module, name: str, ranks: Sequence[int], score: Score, *,
                     tolerance: float = 0.01, method: Method = "svd") -> ScanResult:
    """Try each rank on a copy of ``model`` and pick the smallest with ``score >= baseline - tolerance``.

    ``score`` maps a model to a number (e.g. validation accuracy in 0..1). ``model`` is not
    changed; apply the result with ``factorize_layer(model, name, rank=result.chosen)``. When no
    rank is good enough the largest one tried is chosen.
    """
    if not ranks:
        raise ConfigError(f"layer {name!r}: sensitivity scan needs at least one rank")
    if tolerance < 0:
        raise ConfigError(f"sensitivity tolerance must be >= 0, got {tolerance}")
    get_module(model, name)
    baseline = float(score(model))
    scores: dict[int, float] = {}
    for rank in sorted(set(ranks)):
        trial = copy.deepcopy(model)
        factorize_layer(trial, name, FactorSpec(method=method, rank=rank))
        scores[rank] = float(score(trial))
    good = [r for r, s in scores.items() if s >= baseline - tolerance]
    return ScanResult(name, baseline, scores, min(good) if good else max(scores))
