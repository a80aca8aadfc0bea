"""Where a module lives: stages that move a model to a faster device put it back where they found it."""

from __future__ import annotations

import sys

import torch
from torch import nn


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer; the CPU for a module that holds no tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def restore_device(model: nn.Module, home: torch.device) -> None:
    """Move ``model`` back to ``home``. While an exception is propagating (a ``finally`` block after a failed
    step) a failing move is dropped, so the caller sees the original error, not a second one from the move
    (after a sticky CUDA error every CUDA call fails)."""
    if sys.exc_info()[0] is None:
        model.to(home)
        return
    try:
        model.to(home)
    except Exception:  # noqa: BLE001 - the error already propagating is the one to report
        pass
