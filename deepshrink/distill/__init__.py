"""Knowledge distillation: Hinton soft targets, feature/attention transfer, transformer losses, Distiller."""

from deepshrink.distill.config import FEATURE_LOSSES, DistillConfig, FeatureLink
from deepshrink.distill.distiller import Distiller, distill, find_module, logits_of, make_adapter
from deepshrink.distill.losses import (
    attention_map,
    attention_matrix_loss,
    attention_transfer_loss,
    feature_loss,
    hidden_state_loss,
    kd_loss,
    logit_matching_loss,
    soft_target_loss,
)

__all__ = [
    "FEATURE_LOSSES", "DistillConfig", "Distiller", "FeatureLink", "attention_map", "attention_matrix_loss",
    "attention_transfer_loss", "distill", "feature_loss", "find_module", "hidden_state_loss", "kd_loss",
    "logit_matching_loss", "logits_of", "make_adapter", "soft_target_loss",
]
