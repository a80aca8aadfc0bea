"""Quantization misuse a user hits: each is one clear error, leaves the model as it was, or now just works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import deepshrink
import deepshrink.quantize as Q
from deepshrink import prune
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize.backends import to_int8


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


def conv_bn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    for bn in (m[1], m[4]):
        bn.running_var.uniform_(0.2, 3.0)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.weight.data.uniform_(0.5, 2)
    return m.eval()


def test_fold_batchnorm_under_a_pruning_mask_is_exact() -> None:
    m = conv_bn()
    prune.unstructured(m, 0.5)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
        Q.fold_batchnorm(m)
        assert torch.allclose(m(x), ref, atol=1e-5)
    assert isinstance(m[1], nn.Identity) and parametrize.is_parametrized(m[0], "weight")


def test_fold_batchnorm_refuses_quantized_weights_and_changes_nothing() -> None:
    m = Q.quantize(conv_bn(), Q.IntWeightConfig(bits=8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    with pytest.raises(ModelError, match="fold batch norms before quantizing"):
        Q.fold_batchnorm(m)
    assert isinstance(m[1], nn.BatchNorm2d) and isinstance(m[4], nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_save_refuses_activation_quantizers_and_saves_them_stripped(tmp_path) -> None:
    q = Q.quantize(mlp(), Q.Int8StaticConfig(), torch.randn(64, 64))
    with pytest.raises(ConfigError, match="quantize their inputs"):
        deepshrink.save(q, tmp_path / "a.dsk")
    assert not (tmp_path / "a.dsk").exists()
    plain = Q.without_input_quantizers(q)
    assert Q.modules.input_quantizers(q) and not Q.modules.input_quantizers(plain)  # the original keeps them
    deepshrink.save(plain, tmp_path / "w.dsk")
    back = deepshrink.load(tmp_path / "w.dsk", model=mlp())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(back(x), plain(x))


@pytest.mark.parametrize("config", [Q.QATConfig(weight_bits=4), Q.QATConfig(weight_bits=4, lsq=True),
                                    Q.BinaryConfig(trainable=True)], ids=["qat", "lsq", "binary"])
def test_save_and_export_store_qat_weights_as_codes(tmp_path, config) -> None:
    from deepshrink.artifact.quantized import save_quantized
    from deepshrink.export import export_model

    q = Q.quantize(mlp(), config)
    ref = save_quantized(q, tmp_path / "ref.dsk").nbytes
    deepshrink.save(q, tmp_path / "s.dsk")
    export_model(q, tmp_path / "e.dsk", "deepshrink")
    float_bytes = deepshrink.save(mlp(), tmp_path / "f.dsk").nbytes
    for name in ("s.dsk", "e.dsk"):
        assert (tmp_path / name).stat().st_size == ref < float_bytes / 4


def test_counts_of_torch_int8_models_match_the_float_model() -> None:
    from deepshrink.measure import count_macs, count_params

    m = mlp()
    x = torch.randn(1, 64)
    for mode in ("static", "dynamic"):
        q = to_int8(m, torch.randn(64, 64), mode=mode)
        assert count_params(q.model) == count_params(q) == count_params(m) == 11_386
        assert count_macs(q.model, (x,)) == count_macs(m, (x,)) == 11_232
    cnn = conv_bn()
    q = to_int8(cnn, torch.randn(32, 3, 8, 8))
    y = torch.randn(1, 3, 8, 8)
    assert count_macs(q.model, (y,)) == count_macs(cnn, (y,))


def test_onnxruntime_modules_are_exported_as_their_graph_and_refused_elsewhere(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from deepshrink.export import export_model, ort_session
    from deepshrink.measure import count_macs, count_params

    q = to_int8(mlp(), torch.randn(64, 64), backend="onnxruntime", threads=1)
    x = torch.randn(5, 64)
    path = export_model(q, tmp_path / "q.onnx", "onnx", (x[:1],))
    assert path.read_bytes() == q.model.model_bytes
    sess = ort_session(path)
    assert np.allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], q(x).numpy(), atol=1e-6)
    for fmt in ("torchscript", "safetensors", "deepshrink"):
        with pytest.raises(ModelError, match="ONNX Runtime graph"):
            export_model(q, tmp_path / f"q.{fmt}", fmt, (x[:1],))
        assert not (tmp_path / f"q.{fmt}").exists()
    with pytest.raises(ModelError, match="ONNX Runtime graph"):
        deepshrink.save(q.model, tmp_path / "q.dsk")
    with pytest.raises(ModelError, match="onnxruntime module"):
        count_params(q)
    with pytest.raises(ModelError, match="onnxruntime module"):
        count_macs(q.model, (x,))


def test_compiled_modules_are_refused_before_any_file_is_written(tmp_path) -> None:
    from deepshrink.export import export_model
    from deepshrink.quantize.backends.inductor import CompiledInt8

    compiled = CompiledInt8(None, 1)
    assert compiled.training is False
    for fmt in ("onnx", "torchscript", "safetensors", "deepshrink"):
        with pytest.raises(ModelError, match="Inductor-compiled"):
            export_model(compiled, tmp_path / f"c.{fmt}", fmt, (torch.randn(1, 4),))
        assert not (tmp_path / f"c.{fmt}").exists()


def test_integer_inputs_run_through_the_onnxruntime_backend() -> None:
    pytest.importorskip("onnxruntime")

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids).mean(1))

    torch.manual_seed(0)
    m = Bag().eval()
    ids = torch.randint(0, 50, (32, 7))
    with torch.no_grad():
        ref = m(ids[:2])
    for mode in ("static", "dynamic"):
        out = to_int8(m, ids, mode=mode, backend="onnxruntime", threads=1)(ids[:2])
        assert torch.allclose(out, ref, atol=0.05)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_batch_norms_folded_into_convolutions_are_not_fallbacks(backend) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    opts = {"threads": 1, "float_layers": ()} if backend == "onnxruntime" else {}
    q = to_int8(conv_bn(), torch.randn(32, 3, 8, 8), backend=backend, strict=True, **opts)
    assert q.fallbacks == []


def test_a_lone_batch_norm_is_still_a_fallback() -> None:
    from deepshrink.quantize.backends.torch_int8 import _fallbacks, folded_batchnorms

    m = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert folded_batchnorms(m) == set()
    assert _fallbacks(m, (nn.Linear, nn.Conv2d)) == ["1 (BatchNorm1d)"]


@pytest.mark.parametrize("call", [
    lambda m: Q.quantize(m, Q.Int8StaticConfig(), torch.randn(4, 63)),
    lambda m: Q.quantize(m, Q.Int8StaticConfig(), torch.randint(0, 5, (4, 64))),
    lambda m: to_int8(m, torch.randn(4, 63)),
    lambda m: to_int8(m, torch.randint(0, 5, (4, 64))),
], ids=["quantize-width", "quantize-dtype", "to_int8-width", "to_int8-dtype"])
def test_calibration_the_model_cannot_take_is_a_data_error(call) -> None:
    with pytest.raises(DataError, match=r"calibration batch 0 \(shape \(4, 6[34]\), torch\.(float32|int64)\)"):
        call(mlp())


def test_numpy_calibration_is_accepted() -> None:
    data = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float64)
    a = Q.quantize(mlp(), Q.Int8StaticConfig(), data)
    b = Q.quantize(mlp(), Q.Int8StaticConfig(), torch.from_numpy(data).float())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert to_int8(mlp(), data).fallbacks == []
    c = Q.quantize(mlp(), Q.Int8StaticConfig(), data.astype(np.float32).tolist())  # samples as Python lists
    with torch.no_grad():
        assert torch.equal(c(x), b(x))
    with pytest.raises(DataError, match="do not form an array"):
        Q.quantize(mlp(), Q.Int8StaticConfig(), [[0.0] * 64, [0.0] * 63])


def test_meta_models_and_bad_thresholds_are_clear_errors() -> None:
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    with pytest.raises(ModelError, match="meta device"):
        Q.quantize(meta, Q.IntWeightConfig(bits=4))
    with pytest.raises(ModelError, match="meta device"):
        to_int8(meta, torch.randn(8, 64))
    with pytest.raises(ConfigError, match="ternary threshold must be a number"):
        Q.TernaryConfig(threshold="0.7")


def test_onnxruntime_entropy_observer_is_refused() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="entropy.*not available with the onnxruntime backend"):
        to_int8(mlp(), torch.randn(64, 64), backend="onnxruntime", observer="entropy")


def test_a_failed_inplace_quantize_leaves_the_model_as_it_was() -> None:
    m = mlp()
    prune.unstructured(m, 0.5)
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = m(x)
    with pytest.raises(ConfigError, match="^4: .*multiple of group_size 32"):
        Q.quantize(m, Q.IntWeightConfig(bits=4, granularity="per_group", group_size=32), inplace=True)
    with torch.no_grad():
        assert torch.equal(m(x), ref)  # the masks stay, no quantizer is left behind
    assert all(len(m[i].parametrizations["weight"]) == 1 for i in (0, 2, 4))
    Q.quantize(m, Q.IntWeightConfig(bits=4, granularity="per_group", group_size=16), inplace=True)
    assert all(len(m[i].parametrizations["weight"]) == 2 for i in (0, 2, 4))


def test_quantizing_shared_kmeans_weights_is_refused() -> None:
    m = Q.quantize(mlp(), Q.KMeansConfig(bits=4))
    for config in (Q.IntWeightConfig(bits=4), Q.QATConfig(weight_bits=4), Q.PowerOfTwoConfig(bits=4)):
        with pytest.raises(ConfigError, match="already quantized or shared"):
            Q.quantize(m, config)
