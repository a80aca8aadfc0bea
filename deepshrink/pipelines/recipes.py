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
    "lenet300": TrainConfig(epochs=20, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine"),
    "lenet5": TrainConfig(epochs=20, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine"),
}

_RETRAIN = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-4, schedule="constant")
_CENTROIDS = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=1e-4, schedule="constant")

_PAPER = {
    "lenet300": {"fc1": LayerSetting(0.08, 6, 5), "fc2": LayerSetting(0.09, 6, 5), "fc3": LayerSetting(0.26, 6, 5)},
    "lenet5": {"conv1": LayerSetting(0.66, 8, 8), "conv2": LayerSetting(0.12, 8, 8),
               "fc1": LayerSetting(0.08, 5, 5), "fc2": LayerSetting(0.19, 5, 5)},
}

_DEFAULT = {
    "lenet300": {"fc1": LayerSetting(0.03, 4), "fc2": LayerSetting(0.06, 4), "fc3": LayerSetting(0.20, 5)},
    "lenet5": {"conv1": LayerSetting(0.66, 6), "conv2": LayerSetting(0.10, 5),
               "fc1": LayerSetting(0.03, 4), "fc2": LayerSetting(0.15, 4)},
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
    base = BASELINE_TRAIN[model].replace(seed=seed)
    retrain, centroids, rounds = _RETRAIN.replace(seed=seed), _CENTROIDS.replace(seed=seed), 3
    if quick:
        base, retrain, centroids, rounds = (base.replace(epochs=1), retrain.replace(epochs=1),
                                            centroids.replace(epochs=1), 1)
    cfg = DeepCompressionConfig(layers=table[model], prune_rounds=rounds, retrain=retrain,
                                cluster_finetune=centroids,
                                bias_dtype="float32" if name == "paper" else "float16")
    return Recipe(model, base, cfg)
