"""Pruning masks as parametrizations: ``weight = original * mask`` during training, then made permanent.

A parametrization (rather than a hook) means gradients to pruned weights are zero by
construction and every optimizer, the trainer and distillation respect the mask unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError


class Mask(nn.Module):
    """Multiplies the weight by a fixed 0/1 mask (a buffer, saved with the state dict)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def weight_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The effective tensor (masked / shared) a layer computes with."""
    return getattr(module, name)


def _masks(module: nn.Module, name: str) -> list[Mask]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [p for p in module.parametrizations[name] if isinstance(p, Mask)]


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    masks = _masks(module, name)
    if not masks:
        return None
    out = masks[0].mask.clone()
    for m in masks[1:]:
        out = out * m.mask
    return out


def set_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Attach (or replace) the mask of ``module.name``; the weight values under the mask are zeroed."""
    current = getattr(module, name)
    if mask.shape != current.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(current.shape)}")
    mask = mask.to(device=current.device, dtype=torch.float32)
    existing = _masks(module, name)
    if existing:
        existing[0].mask.copy_(mask)
        for extra in existing[1:]:
            extra.mask.fill_(1.0)
    else:
        parametrize.register_parametrization(module, name, Mask(mask))
    with torch.no_grad():
        original = module.parametrizations[name].original
        if original.shape == mask.shape:
            original.mul_(mask)


def remove_masks(model: nn.Module) -> None:
    """Make every mask permanent: the module keeps plain (zeroed) weights and no parametrization."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            if _masks(module, name) and len(module.parametrizations[name]) == 1:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
