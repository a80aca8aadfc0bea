"""Observers against hand-computed ranges, and the empty / NaN cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.quantize.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    PercentileObserver,
    kl_threshold,
    make_observer,
)


def test_minmax_and_qparams() -> None:
    o = MinMaxObserver(bits=8)
    o.update(torch.tensor([-1.0, 0.5]))
    o.update(torch.tensor([2.0, 0.0]))
    assert o.range() == (-1.0, 2.0)
    s, z = o.qparams()
    assert math.isclose(float(s), 3 / 255, rel_tol=1e-6) and float(z) == 85.0


def test_moving_average_hand_computed() -> None:
    o = MovingAverageObserver(averaging_constant=0.5)
    o.update(torch.tensor([-2.0, 2.0]))
    o.update(torch.tensor([0.0, 4.0]))
    assert o.range() == (-1.0, 3.0)  # -2 + 0.5 (0 - -2), 2 + 0.5 (4 - 2)


def test_percentile_hand_computed() -> None:
    o = PercentileObserver(percentile=90.0)
    o.update(torch.arange(101, dtype=torch.float32))
    assert o.range() == pytest.approx((10.0, 90.0))


def test_mse_clips_an_outlier() -> None:
    x = torch.cat([torch.linspace(-1, 1, 10_000), torch.tensor([50.0])])
    o = MSEObserver(bits=4)
    o.update(x)
    lo, hi = o.range()
    assert hi < 50.0 * 0.9 and lo < 0
    m = MinMaxObserver(bits=4)
    m.update(x)
    assert m.range() == (-1.0, 50.0)


def test_entropy_threshold_clips_long_tail() -> None:
    rng = np.random.default_rng(0)
    vals = np.abs(rng.standard_normal(200_000))
    vals[:5] = 40.0
    t = kl_threshold(vals, float(vals.max()), 2048, 128)
    assert 2.0 < t < 20.0
    o = EntropyObserver()
    o.update(torch.from_numpy(vals).float())
    lo, hi = o.range()
    assert lo == 0.0 and 2.0 < hi < 20.0


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_empty_and_nan(name: str) -> None:
    o = make_observer(name)
    with pytest.raises(DataError):
        o.range()
    with pytest.raises(ModelError):
        o.update(torch.tensor([1.0, float("nan")]))


def test_unknown_observer() -> None:
    with pytest.raises(ConfigError):
        make_observer("magic")


def test_entropy_ignores_relu_zero_spike() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(100_000, generator=g))  # half exact zeros
    o = EntropyObserver()
    o.update(x)
    lo, hi = o.range()
    assert lo == 0.0 and hi > 2.0  # not crushed to max/16 by the zero bin
