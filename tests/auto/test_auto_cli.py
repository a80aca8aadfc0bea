"""`deepshrink sensitivity` and `deepshrink auto` through the real entry point: outputs, JSON, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from deepshrink.artifact import StoragePolicy, save
from deepshrink.cli import main
from deepshrink.models import create


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "lenet300.dsk"
    save(create("lenet300"), path, StoragePolicy(sparse=False, coding="packed"))
    return str(path)


def test_sensitivity_cli_writes_data_and_plot(weights: str, tmp_path, capsys) -> None:
    code = main(["sensitivity", "--model", "lenet300", "--weights", weights, "--out", str(tmp_path),
                 "--keeps", "1,0.1", "--bits", "4", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["layers"]) == {"fc1", "fc2", "fc3"}
    assert data["layers"]["fc1"]["keeps"] == [1.0, 0.1]
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_auto_cli_end_to_end(weights: str, tmp_path) -> None:
    out = tmp_path / "auto"
    proc = subprocess.run([sys.executable, "-m", "deepshrink", "auto", "--model", "lenet300", "--weights", weights,
                           "--out", str(out), "--max-drop", "50", "--time-budget", "20", "--retrain-epochs", "1",
                           "--finetune-epochs", "1", "--json"],
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "DEEPSHRINK_PROGRESS": "0"}, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["recipe"] == "auto" and (proc.returncode == 0) == report["budget_met"]
    assert (out / "model.dsk").stat().st_size == report["artifact_bytes"]
    assert (out / "report.html").exists() and (out / "auto_state.json").exists()
    assert "histograms" not in report["baseline"]


@pytest.mark.parametrize("argv, message, code", [
    (["auto", "--model", "nosuchmodel"], "unknown model", 1),
    (["auto", "--model", "lenet300", "--max-drop", "-1"], "0..100", 2),  # bad option values: usage errors
    (["auto", "--model", "lenet300", "--target-bytes", "lots"], "--target-bytes", 2),
    (["auto", "--model", "lenet300", "--time-budget", "0"], "time budget", 2),
    (["auto", "--model", "lenet300", "--augment", "rotate:3"], "unknown augmentation 'rotate'", 2),
    (["auto", "--model", "lenet300", "--augment", "shift:0"], "pixel count", 2),
    (["auto", "--model", "lenet300", "--confidence", "-1"], "confidence must be 0..5", 2),
    (["auto", "--model", "lenet300", "--retrain-epochs", "-1"], "epochs must be an integer >= 0", 2),
    (["auto", "--model", "lenet300", "--val-fraction", "1.5", "--weights", "{w}"], "validation fraction", 2),
    (["auto", "--model", "lenet300", "--weights", "/nonexistent.dsk"], "does not exist", 1),
    (["sensitivity", "--model", "lenet300", "--keeps", "a,b", "--weights", "{w}"], "--keeps", 2),
    (["sensitivity", "--model", "lenet300", "--keeps", ",", "--weights", "{w}"], "--keeps gives no value", 2),
    (["sensitivity", "--model", "lenet300", "--bits", "0", "--weights", "{w}"], "bit width", 2),
    (["sensitivity", "--model", "lenet300", "--layers", "fc9", "--keeps", "1", "--weights", "{w}"], "'fc9'", 2),
    (["sensitivity", "--model", "lenet300", "--layers", "fc3", "--ranks", "10,50", "--weights", "{w}"],
     "not below the smaller side", 2),
])
def test_bad_input_is_one_line_and_nonzero(argv: list[str], message: str, code: int, weights: str, tmp_path,
                                          capsys) -> None:
    argv = [a.replace("{w}", weights) for a in argv] + ["--out", str(tmp_path / "o")]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_sensitivity_refuses_bad_layers_and_ranks_before_training_the_baseline(tmp_path, capsys) -> None:
    for extra in (["--layers", "nosuch"], ["--ranks", "0"]):
        out = tmp_path / extra[0].strip("-")
        assert main(["sensitivity", "--model", "lenet300", *extra, "--out", str(out)]) == 2
        assert not list(out.glob("baseline*")), "a baseline was trained before the options were checked"


def test_sensitivity_scan_takes_numpy_grids() -> None:
    import numpy as np
    import torch
    from torch import nn

    from deepshrink.sensitivity import scan

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    res = scan(m, lambda model: 1.0, keeps=np.array([1.0, 0.5]), bits=np.array([4, 2]))
    assert res.layers["0"].bits == (4, 2) and res.layers["0"].keeps == (1.0, 0.5)


def test_zoo_lenets_retrain_as_their_recipe_others_with_the_defaults() -> None:
    import argparse

    from deepshrink.auto import AutoConfig
    from deepshrink.commands.auto import _config
    from deepshrink.pipelines.recipes import recipe

    base = AutoConfig(max_drop_pt=1.0)
    opts = {"max_drop": 0.5, "target_bytes": None, "target_latency": None, "time_budget": 60.0, "seed": 3,
            "confidence": 1.0, "explore": False, "augment": "shift:2"}
    dc = recipe("lenet300", "default").compression
    cfg = _config(argparse.Namespace(model="lenet300", retrain_epochs=None, finetune_epochs=None, **opts), base)
    assert cfg.retrain == dc.retrain.replace(seed=3, augment="shift:2")
    assert cfg.finetune == dc.cluster_finetune.replace(seed=3, augment="shift:2")
    cfg = _config(argparse.Namespace(model="mlp", retrain_epochs=4, finetune_epochs=None, **opts), base)
    assert cfg.retrain == base.retrain.replace(epochs=4, seed=3, augment="shift:2")
    assert cfg.finetune == base.finetune.replace(seed=3, augment="shift:2")
