"""Where a module lives: stages that move a model to a faster device put it back where they found it."""

from __future__ import annotations

import torch
from torch import nn


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer; the CPU for a module that holds no tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
