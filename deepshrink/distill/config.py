"""Distillation settings: one frozen, validated config and the feature links it pairs by layer name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from deepshrink.core.errors import ConfigError
from deepshrink.distill.losses import SOFT_LOSSES
from deepshrink.train.trainer import TrainConfig

FEATURE_LOSSES = ("mse", "cosine", "attention")


@dataclass(frozen=True)
class FeatureLink:
    """Match the output of ``student_layer`` to that of ``teacher_layer`` (names from ``named_modules``).

    ``loss``: ``mse`` (FitNets hint loss) or ``cosine`` on the features after a learned adapter when the
    widths differ; ``attention`` (Zagoruyko & Komodakis) compares channel-pooled spatial attention maps
    of CNN activations and needs no adapter. ``weight`` scales this link's loss in the total.
    """

    student_layer: str
    teacher_layer: str
    loss: str = "mse"
    weight: float = 1.0

    def __post_init__(self) -> None:
        for what in ("student_layer", "teacher_layer"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"distill feature link: {what} must be a non-empty layer name, got {value!r}")
        if self.loss not in FEATURE_LOSSES:
            raise ConfigError(
                f"distill feature link {self.student_layer}->{self.teacher_layer}: loss must be one of "
                f"{', '.join(FEATURE_LOSSES)}, got {self.loss!r}"
            )
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(
                f"distill feature link {self.student_layer}->{self.teacher_layer}: weight must be a finite "
                f"number >= 0, got {self.weight!r}"
            )


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation run.

    ``temperature`` softens both softmaxes; ``alpha`` is the weight of the soft (teacher) loss, ``1 - alpha``
    that of the hard-label cross-entropy; ``soft_loss`` is that teacher term: ``kl`` (Hinton's ``T^2 * KL``)
    or ``logit_mse`` (Ba & Caruana's regression on the logits, ``temperature`` unused); ``features`` adds intermediate-layer losses; ``train`` holds the
    optimizer, schedule, epochs and seed used by the shared trainer. ``cache_teacher`` computes the teacher's
    outputs once per training sample and reuses them every epoch: only valid when the samples are fixed
    (a plain ``TensorDataset``-like dataset with no random augmentation) and the teacher is deterministic
    in eval mode.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    features: tuple[FeatureLink, ...] = ()
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_teacher: bool = False
    soft_loss: str = "kl"

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            raise ConfigError(f"distill: temperature must be a finite number > 0, got {t!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ConfigError(f"distill: alpha (weight of the soft loss) must be in [0, 1], got {a!r}")
        feats = self.features
        if isinstance(feats, FeatureLink):
            feats = (feats,)
        if not isinstance(feats, (tuple, list)):
            raise ConfigError("distill: features must be a tuple of FeatureLink")
        feats = tuple(feats)
        for link in feats:
            if not isinstance(link, FeatureLink):
                raise ConfigError(f"distill: features must hold FeatureLink objects, got {type(link).__name__}")
        object.__setattr__(self, "features", feats)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"distill: train must be a TrainConfig, got {type(self.train).__name__}")
        if self.soft_loss not in SOFT_LOSSES:
            raise ConfigError(f"distill: soft_loss must be one of {', '.join(SOFT_LOSSES)}, got {self.soft_loss!r}")
        if not isinstance(self.cache_teacher, bool):
            raise ConfigError(f"distill: cache_teacher must be True or False, got {self.cache_teacher!r}")
        if self.cache_teacher and self.train.augment is not None:
            raise ConfigError(f"distill: cache_teacher keeps the teacher's outputs on the images as they are, and "
                              f"train.augment {self.train.augment!r} moves them: use one or the other")
