"""Training shared by every stage."""

from deepshrink.train.trainer import TrainConfig, Trainer, TrainResult, default_device, seed_everything

__all__ = ["TrainConfig", "TrainResult", "Trainer", "default_device", "seed_everything"]
