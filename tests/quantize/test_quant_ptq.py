"""The quantize() entry point: SQNR floors per scheme, selection / overrides, bad input, BN folding, artifacts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
import deepshrink.quantize as Q
from deepshrink.artifact.model_io import save
from deepshrink.artifact.quantized import save_quantized
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.models import create
from deepshrink.quantize.modules import input_quantizers, quantized_weight
from deepshrink.quantize.primitives import sqnr_db


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create("mlp", in_features=32, hidden=[64, 32], num_classes=10).eval(), torch.randn(256, 32)


# Output SQNR (dB) floors on the tiny MLP; measured values are ~6-8 dB higher (see docs/quantization.md).
FLOORS = [
    (Q.IntWeightConfig(bits=8), 38.0),
    (Q.IntWeightConfig(bits=8, rounding="stochastic"), 36.0),
    (Q.IntWeightConfig(bits=4), 17.0),
    (Q.IntWeightConfig(bits=4, granularity="per_tensor"), 16.0),
    (Q.IntWeightConfig(bits=4, granularity="per_group", group_size=16), 17.0),
    (Q.IntWeightConfig(bits=4, weight_observer="mse"), 17.0),
    (Q.IntWeightConfig(bits=2, symmetric=False), 6.0),
    (Q.FixedPointConfig(bits=8, frac_bits=8), 28.0),
    (Q.PowerOfTwoConfig(bits=4), 9.0),
    (Q.KMeansConfig(bits=4), 18.0),
    (Q.TernaryConfig(), 7.0),
    (Q.BinaryConfig(), 4.0),
    (Q.Int8StaticConfig(), 34.0),
    (Q.Int8StaticConfig(observer="mse"), 30.0),
    (Q.Int8DynamicConfig(), 34.0),
]


@pytest.mark.parametrize("cfg,floor", FLOORS, ids=lambda v: type(v).__name__ if not isinstance(v, float) else "")
def test_sqnr_floor(tiny: tuple[nn.Module, torch.Tensor], cfg: Q.QuantConfig, floor: float) -> None:
    model, x = tiny
    q = Q.quantize(model, cfg, x)
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) > floor
    assert all(p.grad is None for p in model.parameters())
    assert not any(isinstance(m, nn.Module) and hasattr(m, "parametrizations") for m in model.modules())


def test_distinct_levels_match_bits(tiny: tuple[nn.Module, torch.Tensor]) -> None:
    model, _ = tiny
    for cfg, n in [(Q.BinaryConfig(), 2), (Q.TernaryConfig(), 3), (Q.IntWeightConfig(bits=3), 8)]:
        q = Q.quantize(model, cfg)
        row = q.layers["fc1"].weight[0]
        assert row.unique().numel() <= n


def test_selection_and_mixed_precision(tiny: tuple[nn.Module, torch.Tensor]) -> None:
    model, _ = tiny
    cfg = Q.IntWeightConfig(bits=8, overrides={r"layers\.fc1": Q.IntWeightConfig(bits=2),
                                               r"layers\.fc3": Q.SkipConfig()})
    q = Q.quantize(model, cfg)
    assert quantized_weight(q.layers["fc1"]).bits == 2
    assert quantized_weight(q.layers["fc2"]).bits == 8
    assert quantized_weight(q.layers["fc3"]) is None
    only = Q.quantize(model, Q.IntWeightConfig(layers=r".*fc2"))
    assert [n for n, m in only.named_modules() if quantized_weight(m) is not None] == ["layers.fc2"]
    with pytest.raises(ConfigError):
        Q.quantize(model, Q.IntWeightConfig(layers="nothing"))
    with pytest.raises(ConfigError):
        Q.IntWeightConfig(layers="(")


@pytest.mark.parametrize("kwargs", [{"bits": 0}, {"bits": 9}, {"bits": 1}, {"granularity": "per_row"},
                                    {"rounding": "up"}, {"group_size": 0, "granularity": "per_group"}])
def test_bad_configs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Q.IntWeightConfig(**kwargs)


def test_bad_inputs(tiny: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    with pytest.raises(DataError):
        Q.quantize(model, Q.Int8StaticConfig())  # no calibration data
    with pytest.raises(DataError):
        Q.quantize(model, Q.Int8StaticConfig(), torch.empty(0, 32))
    with pytest.raises(DataError):
        Q.quantize(model, Q.Int8StaticConfig(), [])
    bad_x = x.clone()
    bad_x[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        Q.quantize(model, Q.Int8StaticConfig(), bad_x)
    broken = create("mlp", in_features=32, hidden=[8], num_classes=2)
    with torch.no_grad():
        broken.layers["fc1"].weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match="NaN or inf"):
        Q.quantize(broken, Q.IntWeightConfig())
    with pytest.raises(ConfigError):
        Q.quantize(model, "int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Q.quantize(Q.quantize(model, Q.IntWeightConfig()), Q.IntWeightConfig(), inplace=True)


def test_calibration_freezes_observers(tiny: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    q = Q.quantize(model, Q.Int8StaticConfig(observer="percentile"), torch.utils.data.TensorDataset(x, x[:, 0]))
    quants = input_quantizers(q)
    assert set(quants) == {"layers.fc1", "layers.fc2", "layers.fc3"}
    assert all(a.mode == "static" and float(a.scale) > 0 for a in quants.values())


def test_fold_batchnorm_matches() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5),
                          nn.BatchNorm1d(5))
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 6, 6))
    model.eval()
    x = torch.randn(8, 3, 6, 6)
    ref = model(x)
    pairs = Q.fold_batchnorm(model)
    assert pairs == [("0", "1"), ("4", "5")]
    assert isinstance(model[1], nn.Identity)
    assert torch.allclose(model(x), ref, atol=1e-5)


@pytest.mark.parametrize("cfg", [Q.IntWeightConfig(bits=b) for b in (2, 3, 4, 5, 6, 7, 8)]
                         + [Q.IntWeightConfig(bits=1, symmetric=False), Q.BinaryConfig(), Q.TernaryConfig(),
                            Q.PowerOfTwoConfig(bits=3), Q.FixedPointConfig(),
                            Q.IntWeightConfig(bits=4, granularity="per_group", group_size=16)],
                         ids=lambda c: f"{type(c).__name__}{getattr(c, 'bits', '')}")
def test_artifact_round_trip_exact(tmp_path, cfg: Q.QuantConfig) -> None:
    model = create("mlp", in_features=64, hidden=[96, 48], num_classes=10).eval()
    x = torch.randn(4, 64)
    q = Q.quantize(model, cfg)
    rep = save_quantized(q, tmp_path / "q.dsk")
    loaded = deepshrink.load(tmp_path / "q.dsk")
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    fp32 = save(model, tmp_path / "f.dsk").nbytes
    bits = next(r.weight_bits for r in rep.tensors if r.encoding == "quant")
    params = 64 * 96 + 96 * 48 + 48 * 10
    overhead = 8 * len(rep.tensors) * 96 + 2000  # per-row scales / zero points, biases, header
    if isinstance(cfg, Q.IntWeightConfig) and cfg.granularity == "per_group":
        overhead += 8 * params // 16
    if isinstance(cfg, Q.PowerOfTwoConfig):
        overhead += 4 * 96 * 2**cfg.bits * 3
    assert rep.nbytes <= params * bits / 8 + overhead  # packed at the code width
    assert rep.nbytes < fp32 * (bits / 32 + 0.35)


def test_artifact_refuses_activation_quantizers(tmp_path, tiny: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    with pytest.raises(ConfigError):
        save_quantized(Q.quantize(model, Q.Int8StaticConfig(), x), tmp_path / "a.dsk")


def test_sensitivity_scan_and_choose_bits(tiny: tuple[nn.Module, torch.Tensor]) -> None:
    from deepshrink.quantize.mixed import choose_bits, sensitivity_scan

    model, x = tiny
    with torch.no_grad():
        ref = model(x)

    def metric(m: nn.Module) -> float:
        with torch.no_grad():
            return sqnr_db(ref, m(x)) if m is not model else 100.0

    sens = sensitivity_scan(model, metric, bits=2)
    assert set(sens) == {"layers.fc1", "layers.fc2", "layers.fc3"}
    cfg = choose_bits(sens, low=4, high=8, keep_high=1)
    q = Q.quantize(model, cfg)
    top = max(sens, key=sens.get)
    assert quantized_weight(dict(q.named_modules())[top]).bits == 8
    assert sorted(quantized_weight(m).bits for n, m in q.named_modules() if quantized_weight(m)) == [4, 4, 8]
