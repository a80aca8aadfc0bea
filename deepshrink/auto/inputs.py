"""The model and data of ``deepshrink sensitivity`` / ``deepshrink auto``: build, load or train, then split."""

from __future__ import annotations

import hashlib
import json

import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Subset

from deepshrink.core.errors import ConfigError
from deepshrink.data import DataSplits
from deepshrink.data import load as load_data
from deepshrink.data.base import data_digest
from deepshrink.train import TrainConfig, Trainer, seed_everything


@dataclass
class Inputs:
    """A trained model, the split data and how the model was obtained."""

    model: nn.Module
    data: DataSplits
    fit: Subset
    val: Subset
    example: Any
    origin: str
    train_seconds: float = 0.0


def baseline_config(model_spec: str, epochs: int | None, seed: int) -> TrainConfig:
    """The Deep Compression recipe's baseline training for zoo LeNets, else 10 epochs of Adam."""
    from deepshrink.pipelines.recipes import BASELINE_TRAIN

    cfg = BASELINE_TRAIN.get(model_spec, TrainConfig(epochs=10, optimizer="adam", lr=1e-3, schedule="cosine"))
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--train-epochs must be >= 1, got {epochs}")
        cfg = cfg.replace(epochs=epochs)
    return cfg.replace(seed=seed)


def compression_training(model_spec: str, retrain: TrainConfig, finetune: TrainConfig) -> tuple[TrainConfig,
                                                                                             TrainConfig]:
    """Retraining and centroid fine-tuning for auto: the Deep Compression recipe's for zoo LeNets (what the
    benchmark runs; two epochs of Adam at 1e-3 from the SGD-trained LeNet-300-100 lose accuracy before they
    recover), else ``retrain`` / ``finetune`` (AutoConfig's defaults)."""
    from deepshrink.pipelines.recipes import BASELINE_TRAIN, recipe

    if model_spec not in BASELINE_TRAIN:
        return retrain, finetune
    dc = recipe(model_spec, "default").compression
    return dc.retrain, dc.cluster_finetune


def prepare(model_spec: str, *, weights: str | None, data: str, out: Path, val_fraction: float = 0.2,
            seed: int = 0, train_epochs: int | None = None, progress: bool | None = None,
            model_args: dict[str, Any] | None = None, check: Callable[[nn.Module], Any] | None = None) -> Inputs:
    """Build ``model_spec`` (zoo name or package.module:factory), load ``weights`` or train on the fit split.

    A trained baseline is cached in ``out`` (``baseline.trained.<epochs>e.s<seed>.v<validation %>.<fingerprint>.dsk``,
    the fingerprint of the model, its arguments, the dataset and the training settings) so a resumed or repeated
    run does not train it again. The validation split is held out of the training data. ``check`` is called
    with the built model before any weights are loaded or trained (to refuse bad settings early).
    """
    from deepshrink.artifact import StoragePolicy, save
    from deepshrink.auto.run import split_train
    from deepshrink.recipe.models import check_runs, load_weights, model_factory

    build = model_factory(model_spec, model_args)  # fails early on a bad model name or import path
    splits = load_data(data)
    fit, val = split_train(splits.train, val_fraction, seed)
    example = splits.test.tensors[0][:1]
    seed_everything(seed)  # the initial weights too: the same --seed trains the same baseline
    model = build()
    check_runs(model, model_spec, data, example)
    if check is not None:
        check(model)
    if weights is not None:
        load_weights(model, weights)
        return Inputs(model.eval(), splits, fit, val, example, f"weights {weights}")
    cfg = baseline_config(model_spec, train_epochs, seed)
    # the name fingerprints everything the baseline depends on: another model, dataset or training setting
    # trains (and caches) its own
    key = json.dumps([model_spec, model_args or {}, data, data_digest(splits), cfg.identity(), val_fraction, seed],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cached = out / f"baseline.trained.{cfg.epochs}e.s{seed}.v{int(round(100 * val_fraction))}.{digest}.dsk"
    if cached.exists():
        try:
            load_weights(model, cached)
            return Inputs(model.eval(), splits, fit, val, example, f"cached baseline {cached.name}")
        except Exception:  # an unreadable cache is retrained
            pass
    start = time.perf_counter()
    seed_everything(seed)
    Trainer(model, cfg, progress=progress, description=f"{model_spec} baseline").fit(fit)
    model.cpu().eval()
    save(model, cached, StoragePolicy(sparse=False, coding="packed"), info={"stage": "baseline-trained"})
    return Inputs(model, splits, fit, val, example, f"trained {cfg.epochs} epochs on the fit split",
                  time.perf_counter() - start)
