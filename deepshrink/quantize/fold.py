"""Batch-norm folding: ``conv(x) -> bn`` becomes one conv with ``w' = w g / sigma``,
``b' = (b - mu) g / sigma + beta``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, ModelError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _weight_to_scale(layer: nn.Module) -> torch.Tensor:
    """The tensor to scale per output channel: the weight, or under pruning masks (which commute with a
    per-channel factor) the original behind them. Any other parametrization (quantizers, shared codebooks)
    would not give the same weight scaled: a ModelError."""
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.weight
    from deepshrink.prune.masks import Mask

    others = [type(p).__name__ for p in layer.parametrizations.weight if not isinstance(p, Mask)]
    if others:
        raise ModelError(f"cannot fold a batch norm into a {type(layer).__name__} whose weight is "
                         f"{', '.join(others)}: scaling quantized or shared weights per channel changes their "
                         "codes; fold batch norms before quantizing or clustering")
    return layer.parametrizations.weight.original


def _check(layer: nn.Module, bn: nn.Module) -> None:
    if not isinstance(layer, _CONVS) or not isinstance(bn, _BNS):
        raise ModelError(f"cannot fold {type(bn).__name__} into {type(layer).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("batch norm without running statistics cannot be folded")
    out = layer.weight.shape[0]
    if bn.num_features != out:
        raise ModelError(f"batch norm has {bn.num_features} features, the layer {out} outputs")
    _weight_to_scale(layer)


def fold_conv_bn(layer: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` (running statistics) into ``layer`` in place."""
    _check(layer, bn)
    with torch.no_grad():
        inv = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
        factor = gamma * inv
        _weight_to_scale(layer).mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(inv)
        new_bias = (bias - bn.running_mean) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold batch norms into the preceding layer (they become ``nn.Identity``); returns the pairs folded.

    ``pairs`` names (layer, bn) explicitly; None finds a layer directly followed by a batch norm
    inside any ``nn.Sequential``. Use on an eval-mode model before quantizing.
    """
    modules = dict(model.named_modules())
    if pairs is None:
        pairs = []
        for name, mod in modules.items():
            if isinstance(mod, nn.Sequential):
                kids = list(mod.named_children())
                for (a, ma), (b, mb) in zip(kids, kids[1:]):
                    if isinstance(ma, _CONVS) and isinstance(mb, _BNS):
                        prefix = f"{name}." if name else ""
                        pairs.append((prefix + a, prefix + b))
    for layer_name, bn_name in pairs:  # every pair checked before the model changes
        if layer_name not in modules or bn_name not in modules:
            raise ConfigError(f"fold_batchnorm: no module named {layer_name!r} or {bn_name!r}")
        try:
            _check(modules[layer_name], modules[bn_name])
        except ModelError as exc:
            raise ModelError(f"fold_batchnorm {layer_name!r} + {bn_name!r}: {exc}") from None
    for layer_name, bn_name in pairs:
        fold_conv_bn(modules[layer_name], modules[bn_name])
        parent_name, _, child = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, nn.Identity())
    return pairs
