"""Where a module lives: stages that move a model to a faster device put it back where they found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer; the CPU for a module that holds no tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def handed_back(*models: nn.Module) -> Iterator[None]:
    """Run the block, then move each model back to the device it was on when the block started, also when the
    block raised. Then a failing move is dropped, so the caller sees the block's error, not a second one from
    the move (after a sticky CUDA error every CUDA call fails)."""
    homes = [module_device(model) for model in models]
    try:
        yield
    except BaseException:
        for model, home in zip(models, homes):
            with suppress(Exception):
                model.to(home)
        raise
    for model, home in zip(models, homes):
        model.to(home)
