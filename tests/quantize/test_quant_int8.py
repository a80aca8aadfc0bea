"""Real int8 execution: integer kernels are used, outputs track the fake-quantized model, fallbacks are listed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink.quantize as Q
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.models import create
from deepshrink.prune.masks import set_mask
from deepshrink.quantize.backends import integer_layers, is_integer_model, to_int8


@pytest.fixture(scope="module")
def lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create("lenet5", conv_relu=True).eval(), torch.randn(32, 1, 28, 28)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_static_int8_runs_integer_kernels_close_to_fake_quant(lenet: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = lenet
    real = to_int8(model, x)
    assert real.method == "fx" and real.fallbacks == []
    assert is_integer_model(real.model)
    assert {"conv1", "conv2", "fc1", "fc2"} <= set(integer_layers(real.model))
    with torch.no_grad():
        ref = model(x)
        fake = Q.quantize(model, Q.Int8StaticConfig(), x)(x)
        out = real(x)
    assert _rel(out, fake) < 0.05  # same scheme, different rounding of scales: a few LSBs apart
    assert _rel(out, ref) < 0.05


def test_untraceable_model_falls_back_to_eager() -> None:
    torch.manual_seed(0)
    model = create("cnn1d").eval()  # `if x.dim() == 2` cannot be traced by torch.fx
    x = torch.randn(32, 40)
    real = to_int8(model, x)
    assert real.method == "eager" and is_integer_model(real.model)
    with torch.no_grad():
        assert _rel(real(x), model(x)) < 0.05
    with pytest.raises(ModelError, match="FX"):
        to_int8(model, x, graph="fx")


def test_dynamic_int8_and_conv_fallback(lenet: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = lenet
    dyn = to_int8(model, mode="dynamic")
    assert dyn.fallbacks == ["conv1 (Conv2d)", "conv2 (Conv2d)"]  # no dynamic conv kernel: documented fallback
    assert integer_layers(dyn.model) == ["fc1", "fc2"]
    with torch.no_grad():
        assert _rel(dyn(x), model(x)) < 0.05
    with pytest.raises(ModelError, match="no dynamic int8 kernel"):
        to_int8(model, mode="dynamic", strict=True)


class _WithNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


def test_layer_without_integer_kernel() -> None:
    model = _WithNorm().eval()
    x = torch.randn(16, 8)
    real = to_int8(model, x, graph="eager")
    assert real.fallbacks == ["norm (LayerNorm)"]
    with pytest.raises(ModelError, match="no int8 kernel"):
        to_int8(model, x, strict=True)


def test_bad_input(lenet: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = lenet
    with pytest.raises(DataError):
        to_int8(model)
    with pytest.raises(DataError):
        to_int8(model, [])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        to_int8(model, bad)
    with pytest.raises(ConfigError):
        to_int8(model, x, mode="int4")
    with pytest.raises(ConfigError):
        to_int8(model, x, observer="magic")
    with pytest.raises(ModelError):
        to_int8(Q.quantize(model, Q.Int8StaticConfig(), x), x)


def test_pruning_mask_is_baked_in() -> None:
    torch.manual_seed(0)
    model = create("mlp", in_features=16, hidden=[32], num_classes=4).eval()
    set_mask(model.layers["fc1"], (torch.rand(32, 16) > 0.5).float())
    x = torch.randn(64, 16)
    real = to_int8(model, x)
    with torch.no_grad():
        assert _rel(real(x), model(x)) < 0.05
    assert integer_layers(real.model) == ["layers.fc1", "layers.fc2"]
    w = real.model.layers.fc1.weight().dequantize()
    assert bool((w[model.layers["fc1"].weight == 0] == 0).all())
