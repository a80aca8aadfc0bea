"""Plots write real, non-trivial PNG files atomically and close their figures."""

from __future__ import annotations

import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from deepshrink.core.errors import ConfigError
from deepshrink.report import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert len(data) > 5000  # axes, bars and labels, not an empty canvas
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


def test_backend_is_agg() -> None:
    assert matplotlib.get_backend().lower() == "agg"


def test_weight_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    before = {"fc1": rng.normal(size=(50, 40)), "fc2": rng.normal(size=(10, 50))}
    after = {}
    for name, w in before.items():
        shared = np.round(w * 4) / 4  # a handful of shared values
        shared[np.abs(w) < 0.5] = 0.0  # pruned
        after[name] = shared
    path = tmp_path / "hist.png"
    assert plots.plot_weight_histograms(before, after, path, "fc weights") == path
    _check_png(path)
    assert matplotlib.pyplot.get_fignums() == []


def test_weight_histograms_dense_after_and_all_zero(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    before = {"a": rng.normal(size=1000), "b": np.zeros(10)}
    after = {"a": rng.normal(size=1000), "b": np.zeros(10)}  # > 256 distinct values -> step histogram
    path = tmp_path / "h.png"
    plots.plot_weight_histograms(before, after, path, "dense")
    _check_png(path)


def test_weight_histograms_mismatched_layers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fc2"):
        plots.plot_weight_histograms({"fc1": np.ones(3)}, {"fc2": np.ones(3)}, tmp_path / "x.png", "t")
    assert list(tmp_path.iterdir()) == []


def test_stage_sizes(tmp_path: Path) -> None:
    path = tmp_path / "sizes.png"
    stages = [("fp32", 1_000_000), ("pruned", 120_000), ("quantized", 40_000), ("huffman", 28_000)]
    assert plots.plot_stage_sizes(stages, path, "sizes") == path
    _check_png(path)
    assert matplotlib.pyplot.get_fignums() == []
    with pytest.raises(ConfigError):
        plots.plot_stage_sizes([("empty", 0)], tmp_path / "bad.png", "bad")


def test_accuracy_vs_size(tmp_path: Path) -> None:
    path = tmp_path / "acc.png"
    result = plots.plot_accuracy_vs_size([("fp32", 0.98, 1_000_000), ("dsk", 0.975, 30_000)], str(path))
    assert result == path
    _check_png(path)
    assert matplotlib.pyplot.get_fignums() == []
