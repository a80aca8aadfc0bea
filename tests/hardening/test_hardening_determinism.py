"""Determinism: the same recipe with the same seed on the same machine gives bit-identical artifacts."""

from __future__ import annotations

import json

import pytest

from deepshrink.demo import run_demo

# report fields that legitimately differ between two runs: wall-clock times and latencies
_TIMED = ("second", "time", "latency", "_ms", "machine")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(t in k for t in _TIMED)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@pytest.mark.slow
def test_same_recipe_and_seed_give_bit_identical_artifacts(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    reports = [run_demo(out, seed=3, quick=True, models=("lenet300",), progress=False) for out in runs]
    names = sorted(p.name for p in runs[0].glob("*.dsk"))
    assert names == sorted(p.name for p in runs[1].glob("*.dsk")) and len(names) == 4
    for name in names:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), f"{name} differs between runs"
    a, b = (_strip(json.loads((out / "report.json").read_text().replace(str(out), "OUT"))) for out in runs)
    assert a == b
    assert reports[0]["models"]["lenet300"]["compression_ratio"] == reports[1]["models"]["lenet300"][
        "compression_ratio"]
