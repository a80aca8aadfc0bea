"""Settings of ``deepshrink auto``: the budget to meet, the wall time allowed and the training steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from deepshrink.core.errors import ConfigError
from deepshrink.train import TrainConfig


def _positive(name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
    if bad or (integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"auto: {name} must be {kind}, got {value!r}")


#: the accuracy budget (points) of a run given only a latency target
LATENCY_ONLY_DROP_PT = 0.5


@dataclass(frozen=True)
class AutoConfig:
    """What to reach and how long to try.

    Budgets (at least one): ``max_drop_pt`` = most accuracy (percentage points, on the validation
    split) the result may lose; ``target_bytes`` = artifact size to reach; ``target_latency_ms`` =
    median latency to reach (checked on the result; Deep Compression storage decodes to dense
    weights, so pruning and sharing do not change it). ``time_budget_s`` bounds the whole search,
    sensitivity scan and final report included. A result is within the accuracy budget when its
    validation drop plus ``confidence`` standard errors of that drop (paired over the validation
    samples) is at most ``margin`` x ``max_drop_pt``: a search makes many decisions on one validation
    split, and one that keeps every lucky draw ends up worse on new data than on that split.
    ``confidence`` 0 and ``margin`` 1 judge the measured drop alone. ``prune_share`` is the part of
    the limit the pruning phase may use before weight sharing.
    ``explore`` adds moves that spend spare time on more validation decisions (single-layer pruning steps
    when the walk stalls, bit probes below the scan's estimate): smaller results, but each extra decision
    is another chance to keep a lucky draw of the validation noise.
    """

    max_drop_pt: float | None = None
    target_bytes: int | None = None
    target_latency_ms: float | None = None
    time_budget_s: float = 900.0
    margin: float = 1.0
    confidence: float = 1.0
    prune_share: float = 0.75
    step_factor: float = 0.4
    keeps: tuple[float, ...] = (1.0, 0.5, 0.3, 0.18, 0.1, 0.06, 0.035, 0.02, 0.01)
    bits: tuple[int, ...] = (6, 5, 4, 3, 2)
    retrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine", label_smoothing=0.1))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine", label_smoothing=0.1))
    seed: int = 0
    explore: bool = False

    def __post_init__(self) -> None:
        if self.max_drop_pt is None and self.target_bytes is None and self.target_latency_ms is None:
            raise ConfigError("auto: give a budget: max accuracy drop, target bytes or target latency")
        if self.max_drop_pt is None and self.target_bytes is None:
            # latency alone: pruning and sharing do not change it, so accuracy must not pay for nothing
            object.__setattr__(self, "max_drop_pt", LATENCY_ONLY_DROP_PT)
        if self.max_drop_pt is not None and (isinstance(self.max_drop_pt, bool) or not isinstance(
                self.max_drop_pt, (int, float)) or not 0 <= self.max_drop_pt <= 100):
            raise ConfigError(f"auto: max accuracy drop must be in 0..100 points, got {self.max_drop_pt!r}")
        if not isinstance(self.explore, bool):
            raise ConfigError(f"auto: explore must be True or False, got {self.explore!r}")
        if (isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float))
                or not 0 <= self.confidence <= 5):
            raise ConfigError(f"auto: confidence must be 0..5 standard errors, got {self.confidence!r}")
        _positive("target bytes", self.target_bytes, integer=True)
        _positive("target latency (ms)", self.target_latency_ms)
        _positive("time budget (s)", self.time_budget_s)
        for name in ("margin", "prune_share", "step_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigError(f"auto: {name} must be in (0, 1], got {value!r}")
        if not self.keeps or any(not 0 < k <= 1 for k in self.keeps):
            raise ConfigError(f"auto: kept fractions must be in (0, 1], got {list(self.keeps)}")
        if not self.bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8
                                for b in self.bits):
            raise ConfigError(f"auto: weight bits must be integers in 1..8, got {list(self.bits)}")

    @property
    def drop_limit(self) -> float | None:
        """Largest validation accuracy drop (points) a result may have, or None without an accuracy budget."""
        if self.max_drop_pt is None:
            return None
        return self.margin * self.max_drop_pt

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keeps"], data["bits"] = list(self.keeps), list(self.bits)
        return data
