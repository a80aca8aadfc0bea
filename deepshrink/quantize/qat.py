"""Quantization-aware training: fake quantization with the straight-through estimator, and LSQ.

``round`` has zero gradient almost everywhere; the STE replaces it by the identity, so weights
keep learning while the forward pass sees quantized values. Values clipped by the range get zero
gradient. LSQ (Esser et al. 2020) also learns the step size ``s`` with gradient scale
``1 / sqrt(K * q_max)``, K the weights that share one step size. After training, ``freeze`` turns each fake quantizer into a frozen
``QuantizedWeight`` (integer codes), exactly matching the eval-mode fake-quant output. Binary
(BinaryConnect / XNOR scale) and ternary (TWN) weights train the same way (``BinaryConfig(trainable=True)``,
``TernaryConfig(trainable=True)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepshrink.quantize import primitives as P
from deepshrink.quantize.modules import QuantizedWeight


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, g: float) -> torch.Tensor:  # type: ignore[override]
        ctx.g = g
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.g, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return _RoundSTE.apply(x)


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize (same values as ``primitives.fake_quantize``) with the clipped STE gradient."""
    q = torch.clamp(round_ste(x / scale) + zero_point, 0, 2**bits - 1)
    return (q - zero_point) * scale


class FakeQuantWeight(nn.Module):
    """Parametrization: uniform fake quantization whose range follows the current weight (min-max)."""

    def __init__(self, bits: int, granularity: str = "per_channel", group_size: int = 128,
                 symmetric: bool = True) -> None:
        super().__init__()
        self.bits = P.check_bits(bits, 2)
        self.granularity = granularity
        self.group_size = group_size
        self.symmetric = symmetric

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = P.minmax_ranges(P.grouped(w.detach(), self.granularity, self.group_size))
        return P.qparams(lo, hi, self.bits, self.symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w3 = P.grouped(w, self.granularity, self.group_size)
        scale, zp = self.qparams(w)
        return fake_quant_ste(w3, scale, zp, self.bits).reshape(w.shape)

    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        w3 = P.grouped(w.detach(), self.granularity, self.group_size)
        scale, zp = self.qparams(w)
        return QuantizedWeight(P.quantize(w3, scale, zp, self.bits), self.bits, tuple(w.shape), scale=scale,
                               zero_point=zp, scheme="uniform")


class LSQWeight(nn.Module):
    """Parametrization with a learned step size per channel (or tensor), symmetric signed codes."""

    def __init__(self, weight: torch.Tensor, bits: int, granularity: str = "per_channel") -> None:
        super().__init__()
        self.bits = P.check_bits(bits, 2)
        self.granularity = granularity
        self.qp = 2 ** (bits - 1) - 1
        w3 = P.grouped(weight.detach(), granularity)
        init = 2 * w3.abs().mean(dim=2, keepdim=True) / math.sqrt(self.qp)
        self.step = nn.Parameter(torch.clamp(init, min=P.EPS))
        self.g = 1.0 / math.sqrt(w3.shape[2] * self.qp)

    def zero_point(self) -> torch.Tensor:
        return torch.full_like(self.step, float(2 ** (self.bits - 1)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w3 = P.grouped(w, self.granularity)
        s = torch.clamp(_GradScale.apply(self.step, self.g), min=P.EPS)
        return fake_quant_ste(w3, s, self.zero_point(), self.bits).reshape(w.shape)

    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        w3 = P.grouped(w.detach(), self.granularity)
        s = torch.clamp(self.step.detach(), min=P.EPS)
        zp = self.zero_point()
        return QuantizedWeight(P.quantize(w3, s, zp, self.bits), self.bits, tuple(w.shape), scale=s,
                               zero_point=zp, scheme="lsq")


class _SignSTE(torch.autograd.Function):
    """``+-1`` (``w >= 0`` -> +1, as the stored codes) forward; gradient passed where ``|w| <= clip``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, clip)
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w, clip = ctx.saved_tensors
        return grad * (w.abs() <= clip).to(grad.dtype), None


class _Replace(torch.autograd.Function):
    """Forward ``hard`` bit for bit, backward the identity to ``w`` (the STE)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return hard.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class FakeBinaryWeight(nn.Module):
    """BinaryConnect / XNOR-Net training: forward ``alpha sign(w)`` with ``alpha = mean |w|`` per channel;
    backward the straight-through estimator, cancelled where ``|w| > clip`` (BinaryConnect's clipping of
    the real-valued weights to ``[-1, 1]``: the hard-tanh STE), so weights cannot drift without bound."""

    def __init__(self, granularity: str = "per_channel", clip: float = 1.0) -> None:
        super().__init__()
        self.granularity = granularity
        self.clip = clip

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w3 = P.grouped(w, self.granularity)
        alpha = torch.clamp(w3.abs().mean(dim=2, keepdim=True), min=P.EPS)
        clip = torch.tensor(self.clip, dtype=w.dtype, device=w.device)
        return (alpha * _SignSTE.apply(w3, clip)).reshape(w.shape)

    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        codes, scale, zp = P.binary_params(P.grouped(w.detach(), self.granularity))
        return QuantizedWeight(codes, 1, tuple(w.shape), scale=scale, zero_point=zp, scheme="binary")


class FakeTernaryWeight(nn.Module):
    """TWN training: forward ``alpha * sign(w) * [|w| > delta]``, ``delta = threshold * mean |w|``, alpha the
    closed-form mean of the kept magnitudes (per channel); straight-through gradient to ``w``."""

    def __init__(self, threshold: float = 0.7, granularity: str = "per_channel") -> None:
        super().__init__()
        self.threshold = threshold
        self.granularity = granularity

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w3 = P.grouped(w, self.granularity)
        with torch.no_grad():
            codes, alpha, zp = P.ternary_params(w3, self.threshold)
            hard = P.dequantize(codes, alpha, zp)
        return _Replace.apply(w3, hard).reshape(w.shape)  # exactly the frozen values; identity gradient

    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        codes, scale, zp = P.ternary_params(P.grouped(w.detach(), self.granularity), self.threshold)
        return QuantizedWeight(codes, 2, tuple(w.shape), scale=scale, zero_point=zp, scheme="ternary")


TRAINABLE = (FakeQuantWeight, LSQWeight, FakeBinaryWeight, FakeTernaryWeight)


def freeze(model: nn.Module) -> nn.Module:
    """Replace every fake/LSQ weight quantizer (in place) by frozen integer codes; returns ``model``."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            plist = module.parametrizations[name]
            fq = plist[-1]
            if not isinstance(fq, TRAINABLE):
                continue
            with torch.no_grad():
                w = plist.original
                for p in list(plist)[:-1]:
                    w = p(w)
                frozen = fq.freeze(w)
            plist[-1] = frozen
    return model
