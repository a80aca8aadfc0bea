"""Export to ONNX / TorchScript / safetensors / the artifact for plain, pruned and quantized zoo models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepshrink import load, prune, quantize
from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.export import check_onnx, export_model
from deepshrink.models import create
from deepshrink.quantize.backends.torch_int8 import to_int8
from deepshrink.quantize.config import IntWeightConfig

pytest.importorskip("onnxruntime")


def _variants() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = create("lenet5")
    x = torch.randn(2, 1, 28, 28)
    pruned = copy.deepcopy(base)
    prune.unstructured(pruned, 0.8)
    quant = copy.deepcopy(base)
    quantize.quantize(quant, IntWeightConfig(bits=4))
    both = copy.deepcopy(pruned)
    quantize.quantize(both, IntWeightConfig(bits=6))
    return {"plain": base, "pruned": pruned, "structured": prune.structured(copy.deepcopy(base), (x,), ratio=0.5),
            "quantized": quant, "pruned+quantized": both}


@pytest.fixture(scope="module")
def variants() -> dict[str, nn.Module]:
    return _variants()


@pytest.mark.parametrize("kind", ["plain", "pruned", "structured", "quantized", "pruned+quantized"])
def test_onnx_matches_pytorch_with_a_new_batch_size(variants, kind, tmp_path) -> None:
    model = variants[kind]
    path = export_model(model, tmp_path / "m.onnx", "onnx", (torch.randn(2, 1, 28, 28),))
    x = torch.randn(5, 1, 28, 28)
    diff = check_onnx(model, path, (x,), rtol=1e-4, atol=1e-5)
    assert 0.0 <= diff < 1e-4
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input0": x.numpy()})
    assert out[0].shape == (5, 10)


@pytest.mark.parametrize("kind", ["plain", "pruned", "structured", "quantized", "pruned+quantized"])
def test_artifact_round_trip_is_exact(variants, kind, tmp_path) -> None:
    model = variants[kind]
    path = export_model(model, tmp_path / "m.dsk", "deepshrink")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load(path)(x), model.eval()(x))


def test_torchscript_and_safetensors_hold_the_effective_weights(variants, tmp_path) -> None:
    from safetensors.torch import load_file

    model = variants["pruned"]
    x = torch.randn(3, 1, 28, 28)
    ts = torch.jit.load(str(export_model(model, tmp_path / "m.pt", "torchscript", (x,))))
    with torch.no_grad():
        assert torch.allclose(ts(x), model(x), atol=1e-6)
    state = load_file(str(export_model(model, tmp_path / "m.safetensors", "safetensors")))
    fresh = create("lenet5")
    fresh.load_state_dict(state)
    assert float((state["fc1.weight"] == 0).float().mean()) > 0.5  # pruning mask applied, not the dense weight
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x), atol=1e-6)


def test_check_onnx_fails_loudly_outside_tolerance(variants, tmp_path) -> None:
    model = variants["plain"]
    path = export_model(model, tmp_path / "m.onnx", "onnx", (torch.randn(2, 1, 28, 28),))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc2.bias.add_(0.5)
    with pytest.raises(ModelError, match="differs from PyTorch"):
        check_onnx(other, path, (torch.randn(2, 1, 28, 28),), rtol=1e-4, atol=1e-5)


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in forward")


def test_bad_input_gives_clear_errors(variants, tmp_path) -> None:
    model = variants["plain"]
    with pytest.raises(ConfigError, match="example_inputs are required"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_model(model, tmp_path / "m.x", "tflite")
    with pytest.raises(ConfigError, match="does not exist"):
        export_model(model, tmp_path / "missing" / "m.onnx", "onnx", (torch.randn(1, 1, 28, 28),))
    with pytest.raises(ModelError, match="_DataDependent.*boom in forward"):
        export_model(_DataDependent(), tmp_path / "d.onnx", "onnx", (torch.randn(1, 2),))
    assert not (tmp_path / "d.onnx").exists()
    int8 = to_int8(copy.deepcopy(model), [torch.randn(2, 1, 28, 28)], mode="dynamic")
    with pytest.raises(ModelError, match="fc1, fc2.*torch int8 kernels"):
        export_model(int8, tmp_path / "q.onnx", "onnx", (torch.randn(1, 1, 28, 28),))
    with pytest.raises(ModelError, match="torch int8 kernels"):
        export_model(int8, tmp_path / "q.dsk", "deepshrink")
