"""Vision models registered into the zoo (see zoo.MODELS), sized for 1x28x28 mnist5k and 1x8x8 digits.

They exist to exercise structured pruning: conv -> BN -> conv (``cnn``), residual additions
(``resnet8``), concatenation (``densenet``), depthwise convs and inverted residuals (``mobilenetv2``),
grouped convs (``resnext``), fused-qkv attention heads (``vit``) and ``nn.MultiheadAttention`` with layer
norms on a residual stream (``transformer``). Every forward derives sizes from tensors or module attributes,
so channel-pruned copies keep working.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ModelError
from deepshrink.models.zoo import MODELS


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=False))


class LeNetBN(nn.Module):
    """A LeNet-5-like CNN with BN and ReLU: two 5x5 conv blocks with max-pooling, then fc -> fc."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: tuple[int, int] | list[int] = (32, 64), hidden: int = 256, image_size: int = 28):
        super().__init__()
        c1, c2 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(c2)
        side = image_size // 4
        if side < 1:
            raise ModelError(f"cnn: image_size {image_size} is too small for two 2x2 pools")
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn plus a (1x1 conv-bn when shapes change) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """A small ResNet: stem + three basic blocks (widths w, 2w, 4w; the last two stride 2), GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], 1)


class DenseNetTiny(nn.Module):
    """DenseNet-style: stem, a dense block (each layer concatenates ``growth`` channels), transition
    (BN-ReLU-1x1 conv, avg-pool), a second dense block, GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: int = 16, growth: int = 12,
                 layers: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        c = stem
        block1 = []
        for _ in range(layers):
            block1.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*block1)
        self.trans_bn = nn.BatchNorm2d(c)
        self.trans = nn.Conv2d(c, c // 2, 1, bias=False)
        c //= 2
        block2 = []
        for _ in range(layers):
            block2.append(DenseLayer(c, growth))
            c += growth
        self.block2 = nn.Sequential(*block2)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = nn.functional.avg_pool2d(self.trans(torch.relu(self.trans_bn(x))), 2)
        x = torch.relu(self.bn(self.block2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (BN, ReLU6), 3x3 depthwise (BN, ReLU6), 1x1 linear projection (BN);
    residual when the stride is 1 and the widths match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hid)
        self.dw = nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False)
        self.bn2 = nn.BatchNorm2d(hid)
        self.project = nn.Conv2d(hid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu6(self.bn1(self.expand(x)))
        out = nn.functional.relu6(self.bn2(self.dw(out)))
        out = self.bn3(self.project(out))
        return x + out if self.use_res else out


class MobileNetV2Tiny(nn.Module):
    """MobileNetV2-style: stem, inverted residual blocks (t, c, n, s), 1x1 head conv, GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, expand: int = 4,
                 head: int = 128):
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        cfg = [(width, 1, 1), (2 * width, 2, 2), (2 * width, 1, 1), (4 * width, 2, 2), (4 * width, 1, 1)]
        blocks, c = [], width
        for cout, stride, _ in cfg:
            blocks.append(InvertedResidual(c, cout, stride, expand))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(c, head, 1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; ``heads`` x ``head_dim`` inner width, so
    whole heads can be removed (``heads`` is read at run time)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(n, t, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """A small ViT: patch embedding conv, class token, learned positions, pre-norm blocks, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, patch: int = 7,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128):
        super().__init__()
        if image_size % patch:
            raise ModelError(f"vit: image_size {image_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ModelError(f"vit: dim {dim} is not a multiple of heads {heads}")
        tokens = (image_size // patch) ** 2
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, dim // heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.blocks(x))
        return self.fc(x[:, 0])


class GroupedBlock(nn.Module):
    """ResNeXt block: 1x1 conv, 3x3 grouped conv (``groups`` paths), 1x1 conv, plus a projection shortcut."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int = 2):
        super().__init__()
        self.reduce = conv_bn(cin, cout, 1)
        self.grouped = conv_bn(cout, cout, 3, stride, groups=groups)
        self.expand = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXtTiny(nn.Module):
    """ResNeXt-style: stem, two grouped-convolution blocks (groups 4 then 8, stride 2), GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        self.block1 = GroupedBlock(width, 2 * width, 4)
        self.block2 = GroupedBlock(2 * width, 4 * width, 8)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MHABlock(nn.Module):
    """Pre-norm transformer block on ``nn.MultiheadAttention`` (batch first) and a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TransformerTiny(nn.Module):
    """A small transformer built on ``nn.MultiheadAttention``: patch embedding, learned positions,
    pre-norm blocks, mean over tokens, linear head. Its embedding width (residual stream, layer norms,
    positions) and attention heads are pruned together."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, patch: int = 7,
                 dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 64):
        super().__init__()
        if image_size % patch:
            raise ModelError(f"transformer: image_size {image_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ModelError(f"transformer: dim {dim} is not a multiple of heads {heads}")
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[MHABlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.blocks(x)).mean(1))


@MODELS.register("cnn")
def cnn(**kwargs: Any) -> nn.Module:
    return LeNetBN(**kwargs)


@MODELS.register("resnet8")
def resnet8(**kwargs: Any) -> nn.Module:
    return ResNet8(**kwargs)


@MODELS.register("densenet")
def densenet(**kwargs: Any) -> nn.Module:
    return DenseNetTiny(**kwargs)


@MODELS.register("mobilenetv2")
def mobilenetv2(**kwargs: Any) -> nn.Module:
    return MobileNetV2Tiny(**kwargs)


@MODELS.register("vit")
def vit(**kwargs: Any) -> nn.Module:
    return ViTTiny(**kwargs)


@MODELS.register("resnext")
def resnext(**kwargs: Any) -> nn.Module:
    return ResNeXtTiny(**kwargs)


@MODELS.register("transformer")
def transformer(**kwargs: Any) -> nn.Module:
    return TransformerTiny(**kwargs)
