"""Quantized weights as parametrizations and activation quantizers as forward pre-hooks.

``QuantizedWeight`` holds frozen integer codes with scales and zero points (or a per-channel lookup
table) and returns their dequantized values: the module stays a plain float module whose weight
is exactly representable by what the artifact stores. It is appended to the weight's
parametrization list, so a pruning mask registered before it stays in effect.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize import primitives as P
from deepshrink.quantize.observers import Observer


class QuantizedWeight(nn.Module):
    """Parametrization ``_ -> dequantize(codes)``: uniform (scale, zero point) or lookup table ``levels``."""

    def __init__(self, codes: torch.Tensor, bits: int, shape: tuple[int, ...], *,
                 scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None,
                 levels: torch.Tensor | None = None, scheme: str = "uniform") -> None:
        super().__init__()
        self.bits = P.check_bits(bits)
        self.shape = tuple(shape)
        self.scheme = scheme
        self.register_buffer("codes", codes.to(torch.uint8))
        if levels is not None:
            self.register_buffer("levels", levels.to(torch.float32))
            self.scale = self.zero_point = None
        else:
            if scale is None or zero_point is None:
                raise ConfigError("QuantizedWeight needs scale and zero_point, or levels")
            self.register_buffer("scale", scale.to(torch.float32))
            self.register_buffer("zero_point", zero_point.to(torch.float32))
            self.levels = None

    def dequantized(self) -> torch.Tensor:
        codes = self.codes.to(torch.int64)
        if self.levels is not None:
            return P.lut_dequantize(codes, self.levels).reshape(self.shape)
        return P.dequantize(codes, self.scale, self.zero_point).reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.dequantized().to(weight.dtype)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bits={self.bits}, groups={tuple(self.codes.shape[:2])}"


def quantized_weight(module: nn.Module, name: str = "weight") -> QuantizedWeight | None:
    """The frozen quantizer of ``module.name`` (the last parametrization), or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    last = module.parametrizations[name][-1]
    return last if isinstance(last, QuantizedWeight) else None


def attach(module: nn.Module, param: nn.Module, name: str = "weight") -> None:
    """Append ``param`` to ``module.name``'s parametrizations (after any pruning mask)."""
    parametrize.register_parametrization(module, name, param, unsafe=True)


class ActQuantizer(nn.Module):
    """Fake-quantizes a tensor. Modes: ``observe`` (calibrate, pass through), ``static`` (frozen
    scale/zero point), ``dynamic`` (min/max of each call), ``off``."""

    def __init__(self, bits: int = 8, symmetric: bool = False, observer: Observer | None = None,
                 mode: str = "observe", where: str = "activation") -> None:
        super().__init__()
        self.bits = P.check_bits(bits)
        self.symmetric = symmetric
        self.observer = observer
        self.mode = mode
        self.where = where
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    def freeze(self) -> None:
        """Take scale and zero point from the observer and switch to ``static``."""
        if self.observer is None:
            raise ConfigError(f"{self.where}: no observer to freeze")
        if self.observer.count == 0:
            raise DataError(f"{self.where}: observer saw no data: the calibration set is empty "
                            "or never reached this layer")
        scale, zp = self.observer.qparams()
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zp.reshape(()))
        self.mode = "static"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if self.observer is None:
                raise ConfigError(f"{self.where}: observe mode needs an observer")
            if not bool(torch.isfinite(x).all()):
                raise ModelError(f"{self.where}: activation contains NaN or inf during calibration")
            self.observer.update(x)
            return x
        if self.mode == "dynamic":
            scale, zp = P.qparams(x.detach().min(), x.detach().max(), self.bits, self.symmetric)
        else:
            scale, zp = self.scale, self.zero_point
        from deepshrink.quantize.qat import fake_quant_ste

        return fake_quant_ste(x, scale, zp, self.bits)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, mode={self.mode}, scale={float(self.scale):.4g}, "
                f"zp={float(self.zero_point):g}")


def _input_hook(module: nn.Module, args: tuple) -> tuple:
    if not args:
        return args
    return (module.input_quant(args[0]), *args[1:])


def add_input_quantizer(module: nn.Module, quantizer: ActQuantizer) -> None:
    """Quantize the first input of ``module`` with ``quantizer`` (a submodule ``input_quant``)."""
    if hasattr(module, "input_quant"):
        raise ConfigError(f"{type(module).__name__} already has an input quantizer")
    module.input_quant = quantizer
    module.register_forward_pre_hook(_input_hook)


def without_input_quantizers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without its activation quantizers (weights keep theirs): what an artifact
    stores of a statically or QAT-quantized model."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        remove_input_quantizer(module)
    return plain


def remove_input_quantizer(module: nn.Module) -> None:
    """Drop ``module``'s activation quantizer and its hook, if it has one (other hooks stay)."""
    if isinstance(getattr(module, "input_quant", None), ActQuantizer):
        del module.input_quant
        for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _input_hook]:
            del module._forward_pre_hooks[key]


def input_quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    """Every activation quantizer in ``model`` by layer name."""
    return {name: m.input_quant for name, m in model.named_modules()
            if isinstance(getattr(m, "input_quant", None), ActQuantizer)}
