"""A small trainer shared by every stage: SGD/Adam, LR schedules, seeds, checkpoints, progress bar.

Compression stages plug in through the model itself (masks and shared weights are
parametrizations, so gradients and updates respect them with no trainer support needed)
and through an optional ``loss_fn`` (e.g. distillation).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepshrink.core.errors import ConfigError, DeepShrinkError
from deepshrink.core.fileio import atomic_writer
from deepshrink.core.guards import check_gradients, check_weights
from deepshrink.core.progress import track

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; validated on creation."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    grad_clip: float | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"train: epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train: batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train: lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"train: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "step"):
            raise ConfigError(f"train: schedule must be constant, cosine or step, got {self.schedule!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("train: weight_decay >= 0, momentum and label_smoothing in [0, 1) required")

    def replace(self, **changes: object) -> TrainConfig:
        return TrainConfig(**{**asdict(self), **changes})


@dataclass
class TrainResult:
    epochs_run: int
    steps: int
    final_loss: float
    history: list[float]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs so runs repeat on the same machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Trainer:
    """Trains a classifier; checkpoints each epoch atomically when ``checkpoint`` is given and resumes from it."""

    def __init__(self, model: nn.Module, config: TrainConfig, *, loss_fn: LossFn | None = None,
                 device: torch.device | str | None = None, checkpoint: str | os.PathLike[str] | None = None,
                 progress: bool | None = None, description: str = "train") -> None:
        self.model = model
        self.cfg = config
        self.device = torch.device(device) if device is not None else default_device()
        self.loss_fn = loss_fn or self._cross_entropy
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.progress = progress
        self.description = description

    def _cross_entropy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y, label_smoothing=self.cfg.label_smoothing)

    def fit(self, data: Dataset | DataLoader) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        if len(data) == 0:
            raise ConfigError("train: the training data is empty")
        shuffle_gen = torch.Generator()
        loader = data if isinstance(data, DataLoader) else DataLoader(
            data, batch_size=cfg.batch_size, shuffle=True, generator=shuffle_gen, drop_last=False,
        )
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("train: the model has no trainable parameters")
        opt = make_optimizer(params, cfg)
        sched = make_schedule(opt, cfg, len(loader))
        start_epoch, history = self._resume(opt, sched)
        was_training = self.model.training
        self.model.train()
        steps = start_epoch * len(loader)
        epoch_loss = history[-1] if history else float("nan")
        for epoch in range(start_epoch, cfg.epochs):
            total, count = 0.0, 0
            # Each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
            shuffle_gen.manual_seed(cfg.seed * 100_003 + epoch)
            batches = track(loader, f"{self.description} {epoch + 1}/{cfg.epochs}", total=len(loader),
                            enabled=self.progress)
            for x, y in batches:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                loss = self.loss_fn(self.model, x, y)
                if not torch.isfinite(loss):
                    raise DeepShrinkError(
                        f"{self.description}: loss became {loss.item()} at epoch {epoch + 1}, step {steps}; "
                        "training diverged (lower the learning rate)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                    if not torch.isfinite(norm):  # name the layer before clipping spreads NaN everywhere
                        check_gradients(self.model, f"{self.description}: epoch {epoch + 1}, step {steps}")
                    nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm)
                opt.step()
                sched.step()
                steps += 1
                total += loss.item() * len(y)
                count += len(y)
            epoch_loss = total / max(1, count)
            history.append(epoch_loss)
            # a finite loss can still leave NaN/inf weights after the last step: never checkpoint those
            check_weights(self.model, f"{self.description}: after epoch {epoch + 1}; training diverged")
            self._save_checkpoint(epoch + 1, opt, sched, history)
        self.model.train(was_training)
        return TrainResult(epochs_run=cfg.epochs - start_epoch, steps=steps, final_loss=epoch_loss,
                           history=history)

    def _save_checkpoint(self, epoch: int, opt, sched, history: list[float]) -> None:
        if self.checkpoint is None:
            return
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "history": torch.tensor(history, dtype=torch.float64),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_writer(self.checkpoint) as fh:
            torch.save(state, fh)

    def _resume(self, opt, sched) -> tuple[int, list[float]]:
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0, []
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"].cpu())
        except Exception as exc:  # any unreadable checkpoint is one clear error
            raise DeepShrinkError(f"cannot resume from checkpoint {self.checkpoint}: {exc}") from None
        return int(state["epoch"]), [float(v) for v in state["history"]]
