"""Mixed precision from a per-layer sensitivity scan: quantize one layer at a time, measure the metric drop,
then give the most sensitive layers more bits."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.quantize.config import IntWeightConfig, QuantConfig
from deepshrink.quantize.ptq import quantize, selected_layers


def sensitivity_scan(model: nn.Module, metric: Callable[[nn.Module], float], bits: int = 4,
                     base: IntWeightConfig | None = None) -> dict[str, float]:
    """Per layer: ``metric(model) - metric(model with only that layer at bits)``; higher = more sensitive."""
    base = base or IntWeightConfig(bits=bits)
    reference = metric(model)
    out = {}
    for name, _, _ in selected_layers(model, base):
        cfg = IntWeightConfig(bits=bits, granularity=base.granularity, group_size=base.group_size,
                              symmetric=base.symmetric, layers=re.escape(name), types=base.types)
        out[name] = reference - metric(quantize(model, cfg))
    return out


def choose_bits(sensitivity: dict[str, float], low: int = 4, high: int = 8, keep_high: int = 1) -> QuantConfig:
    """A config with ``high`` bits for the ``keep_high`` most sensitive layers and ``low`` bits elsewhere."""
    if keep_high < 0 or not sensitivity:
        raise ConfigError("choose_bits needs a non-empty sensitivity scan and keep_high >= 0")
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)  # type: ignore[arg-type]
    overrides = {re.escape(name): IntWeightConfig(bits=high) for name in ranked[:keep_high]}
    return IntWeightConfig(bits=low, overrides=overrides)
