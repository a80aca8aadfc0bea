"""Top-1 accuracy and mean cross-entropy of a classifier over a dataset or loader."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deepshrink.core.devices import module_device
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.measure._runtime import eval_mode, first_line


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` in 0..1, ``loss`` as the per-sample mean cross-entropy and ``hits``, each sample's top-1
    correctness in data order (a CPU bool tensor: paired comparisons of two models on the same data)."""

    accuracy: float
    loss: float
    correct: int
    total: int
    hits: torch.Tensor | None = field(default=None, repr=False, compare=False)


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    """Turn a Dataset, an ``(inputs, labels)`` tensor pair or a loader into an iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if data[0].shape[0] != data[1].shape[0]:
            raise DataError(f"inputs have {data[0].shape[0]} rows but labels have {data[1].shape[0]}")
        data = TensorDataset(*data)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, Iterable):
        return data
    raise DataError(f"cannot evaluate on {type(data).__name__}: need a Dataset, a DataLoader or (x, y)")


def _score_batch(model: nn.Module, batch: Any, device: torch.device) -> tuple[float, torch.Tensor]:
    """Summed cross-entropy and per-sample top-1 correctness of one ``(inputs, labels)`` batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError("each batch must be an (inputs, labels) pair")
    if not all(isinstance(t, torch.Tensor) for t in batch[:2]):
        raise DataError("batch inputs and labels must be tensors")
    inputs, labels = batch[0].to(device), batch[1].to(device).long()
    try:
        logits = model(inputs)
    except Exception as exc:  # user code failing is a model problem
        raise ModelError(f"model cannot run on the evaluation data: {first_line(exc)}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"model output {shape} is not (batch, classes) logits for {labels.shape[0]} labels")
    bad = (labels < 0) | (labels >= logits.shape[1])  # cross_entropy would skip -100 (its ignore_index) silently
    if bool(bad.any()):
        raise DataError(f"labels do not fit {logits.shape[1]} output classes: label "
                        f"{int(labels[bad][0])} (labels must be 0..{logits.shape[1] - 1})")
    try:
        loss = float(F.cross_entropy(logits.float(), labels, reduction="sum").item())
    except (IndexError, RuntimeError) as exc:
        raise DataError(f"labels do not fit {logits.shape[1]} output classes: {first_line(exc)}") from None
    return loss, (logits.argmax(dim=1) == labels).cpu()


def evaluate(
    model: nn.Module,
    loader_or_dataset: Any,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 512,
) -> EvalResult:
    """Evaluate in eval mode under inference_mode; training flags and the model's device are restored.

    ``device=None`` runs where the model's parameters already live.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    home = module_device(model)
    target = torch.device(device) if device is not None else home
    hits: list[torch.Tensor] = []
    loss_sum = 0.0
    if target != home:
        model.to(target)
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in _batches(loader_or_dataset, batch_size):
                batch_loss, batch_hits = _score_batch(model, batch, target)
                loss_sum += batch_loss
                hits.append(batch_hits)
    finally:
        if target != home:
            model.to(home)
    every = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    total, correct = int(every.numel()), int(every.sum())
    if total == 0:
        raise DataError("evaluation data is empty")
    return EvalResult(accuracy=correct / total, loss=loss_sum / total, correct=correct, total=total, hits=every)
