"""Recovery after factorization: fine-tuning with cross-entropy, optionally plus logit distillation.

``kd_loss(teacher)`` is a ``Trainer(loss_fn=...)`` loss: ``(1 - alpha) * CE(student, y) +
alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al. 2015).
``recover_features`` adds feature distillation from the original model through ``deepshrink.distill``:
each substituted layer's output is pulled towards the original layer's output (FitNets-style MSE;
same shapes, so no adapter), which is what a substitution initialised from the original kernel
should converge back to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from deepshrink.core.devices import handed_back
from deepshrink.core.errors import ConfigError
from deepshrink.train import TrainConfig, Trainer
from deepshrink.train.trainer import LossFn, TrainResult


def kd_loss(teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.7) -> LossFn:
    """A logit-distillation loss against a frozen ``teacher`` (put in eval mode, never updated)."""
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = student(x)
        hard = nn.functional.cross_entropy(logits, y)
        if alpha == 0.0:
            return hard
        with torch.no_grad():
            target = nn.functional.log_softmax(teacher(x) / temperature, dim=1)
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, dim=1), target,
                                    reduction="batchmean", log_target=True)
        return (1.0 - alpha) * hard + alpha * temperature**2 * soft

    return loss


def recover(model: nn.Module, train: Dataset, config: TrainConfig, *, teacher: nn.Module | None = None,
            temperature: float = 4.0, alpha: float = 0.7, device: str | torch.device | None = None,
            progress: bool | None = None) -> TrainResult:
    """Fine-tune a factorized ``model`` (with logit distillation from ``teacher`` when given); both run on
    ``device`` and are handed back on the devices they were on."""
    loss_fn = kd_loss(teacher, temperature=temperature, alpha=alpha) if teacher is not None else None
    trainer = Trainer(model, config, loss_fn=loss_fn, device=device, progress=progress, description="recover")
    if teacher is None:
        return trainer.fit(train)
    with handed_back(teacher):  # the teacher runs beside the student and goes back where it was, as the student
        teacher.to(trainer.device)
        return trainer.fit(train)


def recover_features(model: nn.Module, teacher: nn.Module, train: Dataset, config: TrainConfig,
                     layers: Sequence[str], *, feature_weight: float = 1.0, temperature: float = 4.0,
                     alpha: float = 0.7, device: str | torch.device | None = None,
                     progress: bool | None = None) -> TrainResult:
    """Fine-tune ``model`` with logit plus feature distillation from ``teacher`` (the original model).

    ``layers`` are module names present in both (e.g. the substituted ``conv2``, whose block output
    has the original conv's shape); each adds ``feature_weight * MSE(student[layer], teacher[layer])``
    to the logit-distillation loss ``(1 - alpha) CE + alpha T^2 KL``.
    """
    from deepshrink.distill import DistillConfig, FeatureLink, distill

    if not layers:
        raise ConfigError("recover_features needs at least one layer name to match")
    links = tuple(FeatureLink(name, name, "mse", feature_weight) for name in layers)
    cfg = DistillConfig(temperature=temperature, alpha=alpha, features=links, train=config)
    return distill(model, teacher, train, cfg, device=device, progress=progress)
