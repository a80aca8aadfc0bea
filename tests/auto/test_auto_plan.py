"""Planning pieces of `deepshrink auto`: config validation, size estimates, the path, the Pareto front."""

from __future__ import annotations

import pytest

from deepshrink.auto import AutoConfig, pareto_front
from deepshrink.auto.plan import estimate_layer_bytes, midpoint, next_step, prune_path
from deepshrink.core.errors import ConfigError
from deepshrink.sensitivity import LayerCurves, SensitivityResult


@pytest.mark.parametrize("kwargs, match", [
    ({}, "give a budget"),
    ({"max_drop_pt": -1}, "0..100"),
    ({"target_bytes": 0}, "positive integer"),
    ({"target_bytes": 1.5}, "positive integer"),
    ({"target_latency_ms": float("nan")}, "positive number"),
    ({"max_drop_pt": 1, "time_budget_s": 0}, "time budget"),
    ({"max_drop_pt": 1, "margin": 1.5}, "margin"),
    ({"max_drop_pt": 1, "keeps": (0.0,)}, "kept fractions"),
    ({"max_drop_pt": 1, "bits": (9,)}, "weight bits"),
    ({"max_drop_pt": 1, "explore": 1}, "explore"),
    ({"max_drop_pt": 1, "confidence": -0.5}, "confidence"),
    ({"max_drop_pt": 1, "confidence": True}, "confidence"),
    ({"max_drop_pt": 1, "confidence": 9}, "confidence"),
])
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AutoConfig(**kwargs)


def test_drop_limit_keeps_a_margin() -> None:
    assert AutoConfig(max_drop_pt=0.5, margin=0.8).drop_limit == pytest.approx(0.4)
    assert AutoConfig(target_bytes=1000).drop_limit is None


def test_layer_bytes_estimate() -> None:
    # 1,000 weights, 10% kept, 4 bits: 100 x (4 + log2(10) + 1) bits + 16 float32 centroids
    assert estimate_layer_bytes(1000, 0.1, 4) == pytest.approx(100 * (4 + 3.321928 + 1) / 8 + 64, rel=1e-4)
    # dense codebook storage wins when nothing is pruned: 1,000 x 4 bits
    assert estimate_layer_bytes(1000, 1.0, 4) == pytest.approx(500 + 64)


def _sens() -> SensitivityResult:
    keeps = (1.0, 0.1, 0.01)
    big = LayerCurves("big", "Linear", 100_000, keeps, (0.9, 0.9, 0.85), (4,), (0.9,))
    small = LayerCurves("small", "Linear", 1_000, keeps, (0.9, 0.5, 0.1), (4,), (0.9,))
    return SensitivityResult(0.9, {"big": big, "small": small})


def test_path_prunes_big_insensitive_layers_first_and_never_grows() -> None:
    path = prune_path(_sens())
    assert len(path) >= 2
    first = path[0]
    assert first["big"] < 1.0 and first["small"] == 1.0
    for a, b in zip(path, path[1:]):
        assert all(b[n] <= a[n] for n in a)
    assert path[-1]["big"] == pytest.approx(0.01)


def test_midpoint_and_next_step() -> None:
    assert midpoint({"a": 1.0}, {"a": 0.01}) == {"a": pytest.approx(0.1)}
    numels = {"a": 10_000}
    path = [{"a": 0.5}, {"a": 0.2}, {"a": 0.05}]
    assert next_step(path, numels, -1, 0.4) == 1  # 20% kept is the first below 40% of the dense bytes
    assert next_step(path, numels, 2, 0.4) == 3  # past the end: nothing left to try


def test_pareto_front() -> None:
    pts = [(100, 0.9), (50, 0.9), (50, 0.8), (10, 0.5), (200, 0.95)]
    assert pareto_front(pts) == [False, True, False, True, True]
