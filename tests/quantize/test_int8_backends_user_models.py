"""int8 backends on user models: a converted model that would fail is refused at conversion, a layer the
calibration never reached is an error, float layers with matrices are fallbacks, and ONNX Runtime keeps
the caller's model mode and every output."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize import IntWeightConfig, quantize
from deepshrink.quantize.backends import to_int8


class ViewCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))  # a view of the channels-last int8 output fails


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) if bool(x.sum() > 0) else self.b(x)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.cls, self.box = nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.cls(h), self.box(h)


def test_a_converted_model_that_cannot_run_is_refused_at_conversion():
    torch.manual_seed(0)
    with pytest.raises(ModelError, match="int8 model of ViewCNN cannot run"):
        to_int8(ViewCNN(), torch.randn(8, 1, 8, 8))


def test_non_float32_models_are_refused_by_name():
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(ModelError, match="float32 model"):
            to_int8(nn.Sequential(nn.Linear(4, 2)).half(), torch.randn(4, 4).half(), backend=backend)


def test_a_layer_the_calibration_never_reached_is_a_data_error():
    torch.manual_seed(0)
    with pytest.raises(DataError, match="saw no data"):
        to_int8(Branchy(), torch.rand(16, 4) + 0.1)  # only positive sums: branch b never runs


def test_recurrent_layers_are_fallbacks_and_strict_refuses_them():
    class Rnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r, self.fc = nn.GRU(4, 16, batch_first=True), nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(self.r(x)[0][:, -1])

    q = to_int8(Rnn(), torch.randn(4, 5, 4), mode="dynamic")
    assert any("GRU" in f for f in q.fallbacks)
    with pytest.raises(ModelError, match="GRU"):
        to_int8(Rnn(), torch.randn(4, 5, 4), mode="dynamic", strict=True)


def test_onnxruntime_keeps_the_callers_mode_and_every_output():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = TwoHeads().train()
    x = torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = to_int8(m, x, backend="onnxruntime")
    assert m.training
    cls, box = q(x[:3])
    ref_cls, ref_box = m.eval()(x[:3])
    assert cls.shape == ref_cls.shape and box.shape == ref_box.shape
    assert (box - ref_box).abs().max() < 0.1 * ref_box.abs().max() + 0.05


def test_quantizing_one_use_of_a_tied_weight_is_refused():
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e, self.out = nn.Embedding(20, 8), nn.Linear(8, 20, bias=False)
            self.out.weight = self.e.weight

        def forward(self, ids):
            return self.out(self.e(ids))

    with pytest.raises(ConfigError, match="shared with e.weight"):
        quantize(TinyLM(), IntWeightConfig(bits=4))


def test_a_trace_that_may_not_generalize_is_reported_to_the_caller(tmp_path):
    from deepshrink.export import export_model

    with pytest.warns(torch.jit.TracerWarning, match="may not hold for other inputs"):
        export_model(Branchy(), tmp_path / "b.onnx", "onnx", torch.rand(2, 4))


def test_check_onnx_reports_onnx_runtime_failures_as_one_line_and_checks_int8_files(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepshrink.export import check_onnx, export_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_model(m, path, "onnx", torch.randn(2, 4), dynamic_axes={})  # batch fixed at 2
    with pytest.raises(ModelError, match="ONNX Runtime cannot run") as err:
        check_onnx(m, path, (torch.randn(3, 4),))
    assert "\n" not in str(err.value)
    q = to_int8(m, torch.randn(16, 4), backend="onnxruntime")
    q.model.save(tmp_path / "int8.onnx")  # its input is named "input": fed by position
    assert check_onnx(q.model, tmp_path / "int8.onnx", (torch.randn(3, 4),)) == 0.0


def test_qat_models_export_to_torchscript_with_their_weights_frozen(tmp_path, capsys):
    from deepshrink.export import export_model
    from deepshrink.quantize import QATConfig

    torch.manual_seed(0)
    m = quantize(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), QATConfig(weight_bits=4))
    x = torch.randn(5, 6)
    export_model(m, tmp_path / "q.pt", "torchscript", x[:1])
    loaded = torch.jit.load(str(tmp_path / "q.pt"))
    assert torch.allclose(loaded(x), m.eval()(x), atol=1e-6)
    pytest.importorskip("onnxruntime")
    to_int8(nn.Sequential(nn.Linear(6, 3)), torch.randn(32, 6), backend="onnxruntime", observer="percentile")
    assert capsys.readouterr().out == ""  # library code never prints


def test_a_channel_shuffle_takes_an_unbatched_input():
    from deepshrink.factorize import to_grouped_pointwise

    m = nn.Sequential(nn.Conv2d(4, 4, 1))
    x = torch.randn(4, 5, 5)
    ref = m(x)
    to_grouped_pointwise(m, "0", groups=2)
    assert m(x).shape == ref.shape
