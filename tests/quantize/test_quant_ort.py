"""ONNX Runtime int8 backend: the executed graph holds integer operators, outputs track the fake-quantized
model, tiny-K convolutions stay float (documented fallback), bad input gives clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import deepshrink.quantize as Q
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize.backends import to_int8
from deepshrink.quantize.backends.onnxruntime import INTEGER_OPS, auto_float_layers, to_onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant_models import TinyCNN  # noqa: E402


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(64, 1, 26, 26)


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    return model, torch.randn(64, 1, 8, 8)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_static_graph_is_integer_and_close_to_fake_quant(cnn: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = cnn
    real = to_int8(model, x, backend="onnxruntime", float_layers=(), threads=1)
    assert real.method == "onnxruntime-static" and real.fallbacks == []
    ops = real.model.op_types()
    assert ops.count("QLinearConv") == 2  # both convolutions run integer kernels
    assert ops.count("QGemm") + ops.count("QLinearMatMul") == 2
    assert "Conv" not in ops and "Gemm" not in ops and "MatMul" not in ops  # nothing weighted left in float
    with torch.no_grad():
        ref = model(x)
        fake = Q.quantize(model, Q.Int8StaticConfig(), x)(x)
        out = real(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # ORT uses 7-bit weights on CPUs without VNNI (reduce_range) and its own rounding of the same min-max ranges.
    assert _rel(out, fake) < 0.06
    assert _rel(out, ref) < 0.06
    assert (out.argmax(1) == fake.argmax(1)).float().mean() > 0.85


def test_auto_keeps_tiny_k_conv_float_and_lists_it(cnn: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = cnn
    assert auto_float_layers(model) == ["conv1"]  # K = 1 * 3 * 3 = 9 < 32; conv2 has K = 72
    real = to_int8(model, x, backend="onnxruntime", threads=1)
    assert any(f.startswith("conv1 ") for f in real.fallbacks)
    ops = real.model.op_types()
    conv = "FusedConv" if "FusedConv" in ops else "Conv"  # ORT fuses Conv + ReLU
    assert ops.count(conv) == 1 and ops.count("QLinearConv") == 1
    assert ops.index(conv) < ops.index("QuantizeLinear") < ops.index("QLinearConv")
    with torch.no_grad():
        assert _rel(real(x), model(x)) < 0.06


def test_mlp_static_and_dynamic_integer_ops(mlp: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = mlp
    static = to_int8(model, x, backend="onnxruntime", threads=1)
    assert static.model.op_types().count("QGemm") + static.model.op_types().count("QLinearMatMul") == 2
    dyn = to_int8(model, x, backend="onnxruntime", mode="dynamic", threads=1)
    assert dyn.method == "onnxruntime-dynamic"
    assert {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"} & set(dyn.model.op_types())
    with torch.no_grad():
        ref = model(x)
        for m in (static, dyn):
            out = m(x)
            assert _rel(out, ref) < 0.06
    # A batch size other than the calibration one runs (dynamic batch axis).
    assert static(x[:5]).shape == (5, 10)


def test_float_mode_has_no_integer_ops_and_matches_torch(mlp: tuple[nn.Module, torch.Tensor], tmp_path) -> None:
    model, x = mlp
    fp32, fallbacks = to_onnxruntime(model, mode="float", example=x[:1], threads=1)
    assert fallbacks == [] and not INTEGER_OPS & set(fp32.op_types())
    with torch.no_grad():
        assert torch.allclose(fp32(x), model(x), atol=1e-5)
    path = fp32.save(tmp_path / "m.onnx")
    assert path.read_bytes() == fp32.model_bytes


def test_bad_input_is_rejected(cnn: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = cnn
    with pytest.raises(ConfigError, match="observer"):
        to_int8(model, x, backend="onnxruntime", observer="mse")
    with pytest.raises(ConfigError, match="backend"):
        to_int8(model, x, backend="tensorrt")
    with pytest.raises(ConfigError, match="float_layers"):
        to_int8(model, x, backend="onnxruntime", float_layers=("nope",))
    with pytest.raises(ConfigError, match="unknown options"):
        to_int8(model, x, threads=2)
    with pytest.raises(DataError, match="empty"):
        to_int8(model, x[:0], backend="onnxruntime")
    with pytest.raises(ModelError, match="fake-quantized"):
        to_int8(Q.quantize(model, Q.Int8StaticConfig(), x), x, backend="onnxruntime")
    bad = TinyCNN().eval()
    with torch.no_grad():
        bad.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        to_int8(bad, x, backend="onnxruntime")


def test_profile_lists_integer_kernels_with_times(mlp: tuple[nn.Module, torch.Tensor]) -> None:
    from deepshrink.quantize.backends.onnxruntime import cpu_has_vnni, profile_nodes

    model, x = mlp
    real = to_int8(model, x, backend="onnxruntime", threads=1)
    rows = profile_nodes(real.model, x, runs=3)
    ops = {op for _, op, _ in rows}
    assert INTEGER_OPS & ops and all(t >= 0 for _, _, t in rows)
    assert rows == sorted(rows, key=lambda r: -r[2])
    assert isinstance(cpu_has_vnni(), bool)
    with pytest.raises(ConfigError, match="runs"):
        profile_nodes(real.model, x, runs=0)
