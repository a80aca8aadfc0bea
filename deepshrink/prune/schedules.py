"""Schedules: how sparsity rises from 0 to the target, with retraining in between.

A schedule calls ``prune(s)`` (tighten masks to sparsity ``s``, monotone) and ``train(loss_fn)``
(retrain the masked model; ``loss_fn`` adds a penalty or None) in its own order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.core.registry import Registry

PruneFn = Callable[[float], None]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
TrainFn = Callable[[LossFn | None], None]


class Schedule:
    """Base contract: ``run(target, prune, train)`` returns the sparsity reached after each prune step."""

    name = "base"

    def __init__(self, steps: int = 1) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"schedule {self.name!r}: steps must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def targets(self, target: float) -> list[float]:
        return [target]

    def run(self, target: float, prune: PruneFn, train: TrainFn | None) -> list[float]:
        done = []
        for s in self.targets(target):
            prune(s)
            done.append(s)
            if train is not None:
                train(None)
        return done


class OneShot(Schedule):
    """Prune to the target at once, then retrain (if a trainer is given)."""

    name = "oneshot"


class Iterative(Schedule):
    """Han et al. 2015: ``steps`` rounds of prune + retrain; each round removes the same fraction of the
    survivors, s_i = 1 - (1 - s)^(i / steps)."""

    name = "iterative"

    def __init__(self, steps: int = 3) -> None:
        super().__init__(steps)

    def targets(self, target: float) -> list[float]:
        return [1 - (1 - target) ** (i / self.steps) for i in range(1, self.steps + 1)]


class Gradual(Schedule):
    """AGP (Zhu & Gupta 2017): s_t = s_f + (s_0 - s_f)(1 - t / n)^3, t = 1..n, s_0 = 0: prunes fast early,
    slowly near the target, with retraining between steps."""

    name = "agp"

    def __init__(self, steps: int = 5) -> None:
        super().__init__(steps)

    def targets(self, target: float) -> list[float]:
        return [target * (1 - (1 - t / self.steps) ** 3) for t in range(1, self.steps + 1)]


class Lasso(Schedule):
    """Train with an L1 penalty lambda x sum|w| over the selected layers (drives weights to zero), prune
    once to the target, then retrain without the penalty."""

    name = "lasso"

    def __init__(self, steps: int = 1, strength: float = 1e-4,
                 layers: dict[str, nn.Module] | None = None) -> None:
        super().__init__(steps)
        if not strength >= 0:
            raise ConfigError(f"lasso strength must be >= 0, got {strength}")
        self.strength = strength
        self.layers = layers or {}

    def penalty(self) -> LossFn:
        layers = list(self.layers.values())

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            base = nn.functional.cross_entropy(model(x), y)
            return base + self.strength * sum(m.weight.abs().sum() for m in layers)

        return loss

    def run(self, target: float, prune: PruneFn, train: TrainFn | None) -> list[float]:
        if train is not None:
            train(self.penalty())
        prune(target)
        if train is not None:
            train(None)
        return [target]


SCHEDULES: Registry[Callable[..., Schedule]] = Registry("pruning schedule")
SCHEDULES.add("oneshot", lambda steps=1, **kw: OneShot(steps))
SCHEDULES.add("iterative", lambda steps=3, **kw: Iterative(steps))
SCHEDULES.add("agp", lambda steps=5, **kw: Gradual(steps))
SCHEDULES.add("lasso", lambda steps=1, strength=1e-4, layers=None, **kw: Lasso(steps, strength, layers))


def get_schedule(spec: str | Schedule, **kwargs: object) -> Schedule:
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"schedule must be a name or a Schedule, got {type(spec).__name__}")
    return SCHEDULES.get(spec)(**kwargs)
