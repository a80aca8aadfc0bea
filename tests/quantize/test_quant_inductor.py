"""Inductor int8 backend (torch.export + torchao X86InductorQuantizer + Inductor freezing): the generated
code calls oneDNN's int8 convolution/linear kernels, outputs track the float model at any batch size,
bad input gives clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize.backends import to_int8

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant_models import TinyCNN  # noqa: E402


@pytest.fixture(scope="module")
def converted() -> tuple[nn.Module, torch.Tensor, object, str]:
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = TinyCNN().eval()
    calib = torch.randn(128, 1, 26, 26)
    int8, code = run_and_get_code(lambda: to_int8(model, calib, backend="inductor", batch_size=16))
    return model, calib, int8, "\n".join(code)


@pytest.mark.slow
def test_generated_code_runs_onednn_int8_kernels(converted) -> None:
    _, _, int8, code = converted
    assert int8.method == "inductor" and int8.fallbacks == []
    assert "qconv" in code and "qlinear" in code  # onednn.qconv_pointwise / qlinear_pointwise: integer GEMMs


@pytest.mark.slow
@pytest.mark.parametrize("batch", [16, 5, 37])
def test_outputs_track_the_float_model_at_any_batch_size(converted, batch: int) -> None:
    model, calib, int8, _ = converted
    x = calib[:batch]
    with torch.no_grad():
        ref, got = model(x), int8(x)
    assert got.shape == ref.shape
    err = (got - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.1  # quantized (not bit-equal to float), yet close
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


@pytest.mark.slow
def test_calls_in_any_grad_mode_reuse_the_frozen_graph(converted) -> None:
    from torch._dynamo.utils import counters

    _, calib, int8, _ = converted
    before = dict(counters["stats"])
    int8(calib[:16])
    with torch.no_grad():
        int8(calib[:16])
    with torch.inference_mode():
        int8(calib[:16])
    assert dict(counters["stats"]) == before  # no recompilation (it would drop the int8 freezing)


@pytest.mark.slow
def test_the_int8_model_is_inference_only(converted) -> None:
    int8 = converted[2].model
    assert int8.eval() is int8
    with pytest.raises(ModelError, match="inference only"):
        int8.train()


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "dynamic"}, "static int8 only"),
    ({"observer": "entropy"}, "histogram observer"),
    ({"per_channel": False}, "per-channel"),
    ({"batch_size": 0}, "batch_size"),
    ({"threads": 0}, "threads"),
    ({"spin": False}, "unknown options"),
])
def test_bad_options_are_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        to_int8(TinyCNN().eval(), torch.randn(4, 1, 26, 26), backend="inductor", **kwargs)


def test_empty_calibration_and_nan_weights_are_refused() -> None:
    with pytest.raises(DataError, match="empty"):
        to_int8(TinyCNN().eval(), torch.empty(0, 1, 26, 26), backend="inductor")
    bad = TinyCNN().eval()
    with torch.no_grad():
        bad.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="fc1.weight.*NaN"):
        to_int8(bad, torch.randn(4, 1, 26, 26), backend="inductor")



@pytest.mark.slow
def test_a_compile_that_lowers_no_integer_kernel_is_refused() -> None:
    """Inductor turned every int8 layer into fp32 math on one torch/torchao pair without an error: the compile
    must fail loudly instead of passing a float model off as int8."""
    from deepshrink.quantize.backends.inductor import warm_frozen

    torch.manual_seed(0)
    float_only = torch.compile(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval())
    with pytest.raises(ModelError, match=r"lowered no int8 kernel \(torch .*, torchao .*\): .* fp32 math"):
        warm_frozen(float_only, (torch.randn(4, 8),), 1)


@pytest.mark.parametrize("line", [
    "buf2 = torch.ops.onednn.qlinear_pointwise.tensor(buf1, x_scale, x_zp, w, ...)",
    "buf1 = torch.ops.onednn.qconv_pointwise.default(arg0_1, 0.02, 128, _frozen_param5, ...)",
    "extern_kernels._int_mm(buf6, _frozen_param61, out=buf7)",
    "buf3 = torch.ops.aten._weight_int8pack_mm.default(buf2, _frozen_param1, _frozen_param2)",
    "aoti_torch_cpu__qlinear_pointwise_tensor(buf1, x_scale, x_zp, ...);",  # C++ wrapper code
    "at::_int_mm_out(buf7, buf6, _frozen_param61);",
])
def test_integer_kernels_are_recognised_in_python_and_cpp_wrapper_code(line: str) -> None:
    from deepshrink.quantize.backends.inductor import check_int8_code

    check_int8_code(["import torch", line])


def test_code_without_an_integer_kernel_is_refused_and_no_code_is_not_judged() -> None:
    from deepshrink.quantize.backends.inductor import check_int8_code

    with pytest.raises(ModelError, match="no int8 kernel .* tested pair is torch 2.13 \\+ torchao 0.18"):
        check_int8_code(["buf4 = torch.ops.mkl._mkl_linear.default(buf3, _frozen_param7, _frozen_param6, None, 4)",
                         "buf1 = torch.ops.mkldnn._convolution_pointwise.default(arg4_1, ...)"])
    check_int8_code([])  # nothing compiled in this call (Dynamo had the graph): nothing to judge


def test_a_model_without_linear_or_conv_layers_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="no Linear or Conv2d layer to quantize in Sequential"):
        to_int8(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.randn(4, 1, 26, 26), backend="inductor", strict=False)
