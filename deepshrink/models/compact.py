"""Compact models registered into the zoo (see zoo.MODELS): MobileNet- and ShuffleNet-style CNNs.

Sized for the embedded 1x28x28 digits; both accept ``in_channels``, ``num_classes`` and a
``width`` multiplier, so a student can be trained directly or distilled into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ModelError
from deepshrink.models.zoo import MODELS


def _channels(c: int, width: float, divisor: int = 1) -> int:
    return max(divisor, int(round(c * width / divisor)) * divisor)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MobileNetTiny(nn.Module):
    """MobileNet-v1 style: a 3x3 stem, then depthwise 3x3 + pointwise 1x1 blocks (BN + ReLU each)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0,
                 stages: Sequence[Sequence[int]] = ((32, 2), (64, 2), (64, 1), (128, 2))):
        super().__init__()
        if not width > 0 or not stages:
            raise ModelError(f"mobilenet_tiny: width must be > 0 and stages non-empty, got {width}, {stages}")
        c = _channels(16, width)
        self.stem = _conv_bn(in_channels, c, 3)
        blocks = []
        for out, stride in stages:
            out = _channels(out, width)
            blocks.append(nn.Sequential(_conv_bn(c, c, 3, stride, groups=c), _conv_bn(c, out, 1)))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ShuffleUnit(nn.Module):
    """ShuffleNet-v1 unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; residual add, or concat when strided."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int):
        super().__init__()
        from deepshrink.factorize.blocks import ChannelShuffle  # local: factorize imports the zoo

        self.stride = stride
        branch = cout - cin if stride == 2 else cout
        mid = max(groups, (branch // 4) // groups * groups)
        first_groups = groups if cin % groups == 0 else 1
        self.reduce = _conv_bn(cin, mid, 1, groups=first_groups)
        self.shuffle = ChannelShuffle(first_groups)
        self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid, relu=False)
        self.expand = _conv_bn(mid, branch, 1, groups=groups if branch % groups == 0 else 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(self.shuffle(self.reduce(x))))
        if self.stride == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), out], 1))
        return torch.relu(x + out)


class ShuffleNetTiny(nn.Module):
    """ShuffleNet-v1 style: 3x3 stem, then stages of shuffle units (first unit of each stage strided)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, groups: int = 3,
                 stages: Sequence[Sequence[int]] = ((48, 2), (96, 2))):
        super().__init__()
        if not width > 0 or groups < 1 or not stages:
            raise ModelError(f"shufflenet_tiny: bad width {width}, groups {groups} or stages {stages}")
        c = _channels(24, width, groups)
        self.stem = _conv_bn(in_channels, c, 3)
        units: list[nn.Module] = []
        for out, repeats in stages:
            out = _channels(out, width, groups)
            if out <= c:
                raise ModelError(f"shufflenet_tiny: each stage must widen the channels ({c} -> {out})")
            units.append(ShuffleUnit(c, out, groups, 2))
            units += [ShuffleUnit(out, out, groups, 1) for _ in range(repeats - 1)]
            c = out
        self.units = nn.Sequential(*units)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("mobilenet_tiny")
def mobilenet_tiny(**kwargs: Any) -> nn.Module:
    return MobileNetTiny(**kwargs)


@MODELS.register("shufflenet_tiny")
def shufflenet_tiny(**kwargs: Any) -> nn.Module:
    return ShuffleNetTiny(**kwargs)
