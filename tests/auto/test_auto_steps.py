"""Search moves of `deepshrink auto` beyond the path: single-layer pruning steps and bit probes."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.auto import AutoConfig
from deepshrink.auto.search import _Search
from deepshrink.sensitivity import LayerCurves, SensitivityResult


def _search(tmp_path: Path) -> _Search:
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 4))  # 1,200 and 120 weights
    data = TensorDataset(torch.randn(8, 40), torch.zeros(8, dtype=torch.long))
    cfg = AutoConfig(max_drop_pt=1.0, keeps=(1.0, 0.1, 0.01), bits=(6, 4, 2))
    search = _Search(model, cfg, data, data, tmp_path, False, lambda _m: None)
    search.state = {"trials": []}
    return search


def test_solo_step_takes_the_biggest_untried_layer_above_the_floor(tmp_path: Path) -> None:
    s = _search(tmp_path)
    assert s._solo_layer({"0": 0.2, "2": 0.5}) == "0"  # 240 weights left beat 60
    s.state["solo_failed"] = ["0"]
    assert s._solo_layer({"0": 0.2, "2": 0.5}) == "2"
    s.state["solo_failed"] = []
    assert s._solo_layer({"0": 0.012, "2": 0.5}) == "2"  # 0.7 x 0.012 is below the 0.01 floor
    s.state["solo_failed"] = ["2"]
    assert s._solo_layer({"0": 0.012, "2": 0.5}) is None


def test_bit_probe_lowers_one_untried_layer_step(tmp_path: Path) -> None:
    s = _search(tmp_path)
    curves = {n: LayerCurves(n, "Linear", numel, (1.0,), (0.9,), (6, 4, 2), scores)
              for n, numel, scores in (("0", 1200, (0.9, 0.9, 0.8)), ("2", 120, (0.9, 0.9, 0.9)))}
    sens = SensitivityResult(0.9, curves)
    keeps = {"0": 1.0, "2": 1.0}
    start = {"0": 4, "2": 4}
    tried = {tuple(sorted(start.items()))}
    first = s._probe_lower(start, sens, keeps, tried)
    assert first is not None and sorted(first.values()) == [2, 4]  # exactly one layer went one step down
    tried.add(tuple(sorted(first.items())))
    second = s._probe_lower(start, sens, keeps, tried)
    assert second is not None and second != first and sorted(second.values()) == [2, 4]
    tried.add(tuple(sorted(second.items())))
    assert s._probe_lower(start, sens, keeps, tried) is None
    assert s._probe_lower({"0": 2, "2": 2}, sens, keeps, set()) is None  # at the bottom of the grid


def _two_class_data() -> TensorDataset:
    """800 samples a 2x2 identity classifier gets 768 right (96.0%); with bias (0, 0.5) it gets 764 (95.5%):
    samples 0-3 (margin 0.2) flip to wrong, the 32 it gets wrong (margin 1) stay wrong."""
    x = torch.zeros(800, 2)
    y = torch.zeros(800, dtype=torch.long)
    x[:4] = torch.tensor([1.0, 0.8])
    x[4:36] = torch.tensor([2.0, 1.0])
    y[4:36] = 1
    x[36:] = torch.tensor([2.0, 0.0])
    return TensorDataset(x, y)


def _linear(bias: float) -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.copy_(torch.tensor([0.0, bias]))
    return lin


def test_a_drop_of_exactly_the_budget_passes_with_confidence_zero(tmp_path: Path) -> None:
    data = _two_class_data()
    cfg = AutoConfig(max_drop_pt=0.5, margin=1.0, confidence=0.0)
    s = _Search(_linear(0.0), cfg, data, data, tmp_path, False, lambda _m: None)
    s.state = {"trials": [], "val_baseline": s.score(s.baseline)}
    acc, se = s.measure(_linear(0.5))
    assert acc == s.score(_linear(0.5)) == 764 / 800  # the exact ratio, as score() gives it
    # 4 samples lost, none won: differences d = 1 (x4), 0 (x796); population std / sqrt(n), in points
    mean = 4 / 800
    expected_se = 100 * ((4 * (1 - mean) ** 2 + 796 * mean**2) / 800) ** 0.5 / 800**0.5
    assert se == pytest.approx(expected_se, rel=1e-12)
    assert s.within(acc, se, cfg.drop_limit)  # 0.5 points lost against a 0.5-point budget
    one_se = AutoConfig(max_drop_pt=0.5, margin=1.0, confidence=1.0)
    s.cfg = one_se
    assert not s.within(acc, se, one_se.drop_limit)  # + 1 standard error (0.25 pt) is over it
