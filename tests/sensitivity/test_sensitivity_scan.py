"""Per-layer sensitivity curves: correct scores, model untouched, interpolation, files, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.measure.accuracy import evaluate
from deepshrink.sensitivity import LayerCurves, SensitivityResult, load_sensitivity, scan, write_sensitivity
from deepshrink.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    centers = torch.randn(3, 10) * 3
    y = torch.randint(0, 3, (300,))
    x = centers[y] + torch.randn(300, 10)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 3))
    Trainer(model, TrainConfig(epochs=15, optimizer="adam", lr=1e-2), progress=False).fit(
        torch.utils.data.TensorDataset(x, y))
    return model.eval(), (x, y)


def test_scan_scores_and_leaves_model_unchanged(trained) -> None:
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = lambda m: evaluate(m, data).accuracy  # noqa: E731
    res = scan(model, score, keeps=(1.0, 0.3, 0.02), bits=(8, 1))
    assert set(res.layers) == {"0", "2"}
    assert res.baseline == score(model) > 0.9
    for curve in res.layers.values():
        assert curve.keeps == (1.0, 0.3, 0.02) and curve.bits == (8, 1)
        assert curve.keep_scores[0] == res.baseline  # keeping everything changes nothing
    # keeping 2% of the first layer (5 of 240 weights) must hurt a model that separates 3 blobs
    assert res.layers["0"].keep_scores[-1] < res.baseline - 0.1
    assert res.layers["0"].numel == 240
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ranks_reuse_factorization_scan(trained) -> None:
    model, data = trained
    res = scan(model, lambda m: evaluate(m, data).accuracy, layers=["0"], keeps=(1.0,), bits=(8,), ranks=(1, 5))
    assert res.layers["0"].ranks == (1, 5) and len(res.layers["0"].rank_scores) == 2


def test_drop_interpolation_is_monotone() -> None:
    curve = LayerCurves("fc", "Linear", 100, (1.0, 0.1, 0.01), (0.9, 0.8, 0.85), (8, 4, 2), (0.9, 0.9, 0.5))
    assert curve.drop_at_keep(0.9, 1.0) == 0.0
    assert curve.drop_at_keep(0.9, 0.1) == pytest.approx(0.1)
    assert curve.drop_at_keep(0.9, 10 ** -1.5) == pytest.approx(0.1)  # 0.85 at 1% does not undo the 0.1 drop
    assert curve.drop_at_keep(0.9, 10 ** -0.5) == pytest.approx(0.05)  # half-way in log space
    assert curve.drop_at_bits(0.9, 3) == pytest.approx(0.2)
    assert curve.drop_at_bits(0.9, 1) == pytest.approx(0.4)


def test_write_and_load_roundtrip(trained, tmp_path) -> None:
    model, data = trained
    res = scan(model, lambda m: evaluate(m, data).accuracy, keeps=(1.0, 0.5), bits=(4,))
    paths = write_sensitivity(res, tmp_path, "blobs")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "keep 0.5" in paths["md"].read_text()
    back = load_sensitivity(paths["json"])
    assert back == res
    assert isinstance(back, SensitivityResult)


def test_bad_input(trained) -> None:
    model, data = trained
    score = lambda m: evaluate(m, data).accuracy  # noqa: E731
    with pytest.raises(ConfigError, match="'nope'"):
        scan(model, score, layers=["nope"])
    with pytest.raises(ConfigError, match="kept fraction"):
        scan(model, score, keeps=(0.0,))
    with pytest.raises(ConfigError, match="bit width"):
        scan(model, score, bits=(0,))
    with pytest.raises(ConfigError, match="ranks"):
        scan(model, score, ranks=(-1,))
