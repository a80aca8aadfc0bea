"""Compact-block substitution: depthwise-separable convs (MobileNet) and grouped 1x1 + shuffle (ShuffleNet).

Depthwise-separable from the original kernel: for each input channel ``c`` the slice
``W[:, c]`` (``out x k^2``) is factorized by SVD as ``sum_j s_j u_j v_j^T``. A depthwise conv
with depth multiplier ``m`` holds ``v_1..v_m`` (scaled by ``s^1/2``) as the ``m`` filters of
channel ``c``; the 1x1 pointwise conv holds the matching ``u_j``. With ``m = min(out, k^2)`` this
reproduces the conv exactly; ``m = 1`` is the classic MobileNet block, initialised with the best
rank-1 approximation of every channel's filters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize.transforms import OPS, get_module, positive_int, record, set_module, svd


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 Conv2d (same parameters and state-dict names) computed as one matrix product.

    Torch's CPU convolution is slow for 1x1 kernels over few channels. On an NCHW input,
    ``baddbmm`` on the ``N x C x HW`` view computes the same result several times faster; on a
    channels-last input the ``N x H x W x C`` view is contiguous, so one ``linear`` computes it
    with no copy and returns a channels-last output (the layout depthwise convs run fastest in).
    """

    #: a Conv2d to structured pruning's graph (traced as one node, cut like any 1x1 convolution)
    deepshrink_leaf = True

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        n, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = nn.functional.linear(x.permute(0, 2, 3, 1), self.weight.reshape(self.out_channels, c), self.bias)
            return out.permute(0, 3, 1, 2)
        weight = self.weight.view(self.out_channels, c).expand(n, -1, -1)
        flat = x.reshape(n, c, h * w)
        if self.bias is None:
            out = torch.bmm(weight, flat)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1), weight, flat)
        return out.view(n, self.out_channels, h, w)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``(g, c/g)`` channel grid transposed to ``(c/g, g)``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ConfigError(f"channel shuffle groups must be >= 1, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # an unbatched (C, H, W) input, as Conv2d takes
            return self.forward(x.unsqueeze(0)).squeeze(0)
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _check_conv(name: str, module: nn.Module) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(f"layer {name!r} ({type(module).__name__}) cannot be substituted; expected Conv2d")
    if module.groups != 1:
        raise ConfigError(f"layer {name!r} is already grouped (groups={module.groups}); cannot substitute it")
    return module


def max_multiplier(conv: nn.Conv2d) -> int:
    """The depth multiplier at which the depthwise-separable block is exact: ``min(out, kh*kw)``."""
    kh, kw = conv.kernel_size
    return min(conv.out_channels, kh * kw)


def _check_multiplier(name: str, conv: nn.Conv2d, multiplier: object) -> None:
    top = max_multiplier(conv)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or not 1 <= multiplier <= top:
        raise ConfigError(f"layer {name!r}: depth multiplier must be in 1..{top}, got {multiplier!r}")


def _check_groups(name: str, conv: nn.Conv2d, groups: object) -> None:
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0):
        raise ConfigError(f"layer {name!r}: grouped pointwise substitution needs a 1x1 conv without padding")
    cin, out = conv.in_channels, conv.out_channels
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or cin % groups or out % groups:
        raise ConfigError(f"layer {name!r}: groups={groups!r} must divide in ({cin}) and out ({out}) channels")


def _build_dwsep(model: nn.Module, entry: dict[str, Any]) -> nn.Sequential:
    name, m = entry["layer"], positive_int(entry, "multiplier")
    conv = _check_conv(name, get_module(model, name))
    _check_multiplier(name, conv, m)
    cin = conv.in_channels
    new = nn.Sequential(
        nn.Conv2d(cin, cin * m, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=cin, bias=False, padding_mode=conv.padding_mode),
        PointwiseConv2d(cin * m, conv.out_channels, bias=conv.bias is not None))
    new.to(conv.weight.device, conv.weight.dtype)
    set_module(model, name, new)
    return new


def _build_grouped_pw(model: nn.Module, entry: dict[str, Any]) -> nn.Sequential:
    name, g = entry["layer"], positive_int(entry, "groups")
    conv = _check_conv(name, get_module(model, name))
    _check_groups(name, conv, g)
    new = nn.Sequential(nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, groups=g,
                                  bias=conv.bias is not None), ChannelShuffle(g))
    new.to(conv.weight.device, conv.weight.dtype)
    set_module(model, name, new)
    return new


OPS.add("dwsep", _build_dwsep)
OPS.add("grouped_pw", _build_grouped_pw)


@torch.no_grad()
def to_depthwise_separable(model: nn.Module, name: str, multiplier: int = 1) -> nn.Sequential:
    """Replace Conv2d ``name`` by depthwise (multiplier ``m``) + pointwise convs initialised from its kernel."""
    conv = _check_conv(name, get_module(model, name))
    _check_multiplier(name, conv, multiplier)
    entry = {"op": "dwsep", "layer": name, "multiplier": multiplier}
    new = _build_dwsep(model, entry)
    w = conv.weight.detach().double()
    out, cin, kh, kw = w.shape
    m = multiplier
    u, s, vh = svd(w.transpose(0, 1).reshape(cin, out, kh * kw))  # one SVD per input channel, batched
    root = s[:, :m].sqrt()  # cin x m
    dw = (root[:, :, None] * vh[:, :m]).reshape(cin * m, 1, kh, kw)
    pw = (u[:, :, :m] * root[:, None, :]).permute(1, 0, 2).reshape(out, cin * m)
    new[0].weight.copy_(dw)
    new[1].weight.copy_(pw[:, :, None, None])
    if conv.bias is not None:
        new[1].bias.copy_(conv.bias)
    new.train(conv.training)
    record(model, entry)
    return new


@torch.no_grad()
def to_grouped_pointwise(model: nn.Module, name: str, groups: int) -> nn.Sequential:
    """Replace a 1x1 Conv2d by a grouped 1x1 conv (block-diagonal part of its weight) + channel shuffle.

    The grouped conv's outputs are ordered so that after the shuffle output channel ``q`` is in
    its original place; it then reads input group ``q % groups``, so the init keeps
    ``W[q, group q % groups]`` and drops the rest (exact when the weight has that structure).
    """
    conv = _check_conv(name, get_module(model, name))
    _check_groups(name, conv, groups)
    cin, out = conv.in_channels, conv.out_channels
    entry = {"op": "grouped_pw", "layer": name, "groups": groups}
    new = _build_grouped_pw(model, entry)
    w = conv.weight.detach()[:, :, 0, 0]
    # shuffle maps grouped-conv channel p = a * (out/g) + b to position b * g + a; invert it
    per = out // groups
    inv = torch.tensor([(p % per) * groups + p // per for p in range(out)])
    gw = torch.empty(out, cin // groups)
    for p in range(out):
        g = p // per
        gw[p] = w[inv[p], g * (cin // groups):(g + 1) * (cin // groups)]
    new[0].weight.copy_(gw[:, :, None, None])
    if conv.bias is not None:
        new[0].bias.copy_(conv.bias[inv])
    new.train(conv.training)
    record(model, entry)
    return new
