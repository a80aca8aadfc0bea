"""Shipped Deep Compression settings: the paper's own (Tables 2-3) and deepshrink's default.

``paper`` reproduces the published per-layer kept fractions, weight bits and index widths
(8-bit conv / 5-bit fc relative indices, fp32 biases). ``default`` goes further: harder fc
pruning, fewer weight bits, the best index width per layer and fp16 biases; its numbers are in
benchmarks/RESULTS.md (mean of 3 seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

from deepshrink.core.errors import ConfigError
from deepshrink.pipelines.deep_compression import DeepCompressionConfig, LayerSetting
from deepshrink.train import TrainConfig

BASELINE_TRAIN = {
    "lenet300": TrainConfig(epochs=40, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                            schedule="cosine", label_smoothing=0.1),
    "lenet5": TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=2e-3, schedule="cosine",
                          label_smoothing=0.1),
}


@dataclass(frozen=True)
class _Plan:
    layers: dict[str, LayerSetting]
    rounds: int
    retrain: TrainConfig
    finetune: TrainConfig
    bias_dtype: str


# The paper: per-layer kept fractions, bits and index widths of Tables 2-3; retraining with Adam.
_PAPER_RETRAIN = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")
_PAPER_FT = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=1e-4, schedule="cosine")
_PAPER = {
    "lenet300": _Plan({"fc1": LayerSetting(0.08, 6, 5), "fc2": LayerSetting(0.09, 6, 5),
                       "fc3": LayerSetting(0.26, 6, 5)}, 3, _PAPER_RETRAIN, _PAPER_FT, "float32"),
    "lenet5": _Plan({"conv1": LayerSetting(0.66, 8, 8), "conv2": LayerSetting(0.12, 8, 8),
                     "fc1": LayerSetting(0.08, 5, 5), "fc2": LayerSetting(0.19, 5, 5)}, 3, _PAPER_RETRAIN,
                    _PAPER_FT, "float32"),
}

# deepshrink's default: harder fc pruning, 4-bit fc weights, the best index width per layer, fp16 biases.
_DEFAULT = {
    "lenet300": _Plan({"fc1": LayerSetting(0.025, 4), "fc2": LayerSetting(0.07, 4), "fc3": LayerSetting(0.25, 4)},
                      5, TrainConfig(epochs=8, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                                     schedule="cosine", label_smoothing=0.1),
                      TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine",
                                  label_smoothing=0.1), "float16"),
    "lenet5": _Plan({"conv1": LayerSetting(0.66, 6), "conv2": LayerSetting(0.15, 5),
                     "fc1": LayerSetting(0.04, 4), "fc2": LayerSetting(0.20, 4)},
                    3, TrainConfig(epochs=5, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine",
                                   label_smoothing=0.1),
                    TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine",
                                label_smoothing=0.1), "float16"),
}


@dataclass(frozen=True)
class Recipe:
    """Baseline training and the Deep Compression settings for one zoo model."""

    model: str
    baseline: TrainConfig
    compression: DeepCompressionConfig


def recipe(model: str, name: str = "default", *, seed: int = 0, quick: bool = False) -> Recipe:
    """The shipped recipe ``name`` (``default`` or ``paper``) for ``model``; ``quick`` shrinks epochs for tests."""
    table = {"default": _DEFAULT, "paper": _PAPER}.get(name)
    if table is None:
        raise ConfigError(f"unknown Deep Compression recipe {name!r}; choose default or paper")
    if model not in table:
        raise ConfigError(f"no Deep Compression recipe for model {model!r}; choose one of {sorted(table)}")
    plan = table[model]
    base = BASELINE_TRAIN[model].replace(seed=seed)
    retrain, finetune, rounds = plan.retrain.replace(seed=seed), plan.finetune.replace(seed=seed), plan.rounds
    if quick:
        base, retrain, finetune, rounds = (base.replace(epochs=1), retrain.replace(epochs=1),
                                           finetune.replace(epochs=1), 1)
    cfg = DeepCompressionConfig(layers=plan.layers, prune_rounds=rounds, retrain=retrain,
                                cluster_finetune=finetune, bias_dtype=plan.bias_dtype)
    return Recipe(model, base, cfg)
