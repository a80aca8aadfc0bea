"""record_stage and write_run_report: measured values, relative columns, atomic files, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deepshrink.artifact import StoragePolicy, save
from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.models import create
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import prune_layer
from deepshrink.quantize.kmeans import share_weights
from deepshrink.report.run import record_stage, stage_rows, weight_histogram, write_run_report


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create("mlp", in_features=16, hidden=(12,), num_classes=3)
    x, y = torch.randn(40, 16), torch.randint(0, 3, (40,))
    save(model, folder / "base.dsk", StoragePolicy(sparse=False, coding="packed"))
    base = record_stage("baseline", "baseline", model, example_inputs=x[:1], eval_data=(x, y),
                        artifact_path=folder / "base.dsk", latency=False)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        prune_layer(layer, 0.25)
    remove_masks(model)
    for layer in layers:
        share_weights(layer, 2)
    save(model, folder / "small.dsk")
    small = record_stage("pruned+shared", "cluster", model, example_inputs=x[:1], eval_data=(x, y),
                         artifact_path=folder / "small.dsk", seconds=1.5)
    return {"model": "mlp", "dataset": "random", "recipe": "test", "baseline": base, "stages": [small],
            "folder": str(folder)}


def test_record_stage_measures_model_and_file(run: dict) -> None:
    base, small = run["baseline"], run["stages"][0]
    assert base["artifact_bytes"] > small["artifact_bytes"] > 0
    assert base["params"] == 16 * 12 + 12 + 12 * 3 + 3
    assert base["latency_ms"] is None and small["latency_ms"] > 0
    assert 0.0 <= small["accuracy"] <= 1.0
    fc = small["layers"][0]
    assert fc["params"] == 16 * 12
    assert fc["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert fc["bits"] == 2  # a 4-entry codebook
    assert base["layers"][0]["bits"] == 32 and base["layers"][0]["sparsity"] == 0.0
    hist = small["histograms"][fc["name"]]
    assert hist["kind"] == "spikes" and len(hist["values"]) <= 4 and sum(hist["counts"]) == hist["nonzeros"]


def test_stage_rows_are_relative_to_baseline(run: dict) -> None:
    rows = stage_rows(run)
    assert rows[0]["size_x"] == 1.0 and rows[0]["delta_pt"] == 0.0
    b, s = run["baseline"], run["stages"][0]
    assert rows[1]["size_x"] == pytest.approx(b["artifact_bytes"] / s["artifact_bytes"])
    assert rows[1]["delta_pt"] == pytest.approx(100 * (s["accuracy"] - b["accuracy"]))
    assert rows[1]["speedup_x"] is None  # baseline latency was not measured


def test_write_run_report_files(run: dict, tmp_path) -> None:
    paths = write_run_report(run, tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["stages"][0]["name"] == "pruned+shared"
    md = paths["md"].read_text()
    assert "| pruned+shared" in md and "| baseline" in md
    for key in ("accuracy_vs_size", "accuracy_vs_latency", "layer_sparsity", "layer_bits", "weight_histograms"):
        png = paths[f"plot:{key}"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{key}.png" in md
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_weight_histogram_bins_for_many_values() -> None:
    hist = weight_histogram(torch.arange(-500, 501, dtype=torch.float32) / 500)
    assert hist["kind"] == "bins" and hist["nonzeros"] == 1000
    assert sum(hist["counts"]) == 1000 and len(hist["edges"]) == len(hist["counts"]) + 1


def test_bad_input_is_one_clear_error(run: dict, tmp_path) -> None:
    with pytest.raises(ModelError, match="nn.Module"):
        record_stage("x", "prune", object(), example_inputs=torch.zeros(1, 16))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kind"):
        record_stage("x", "", nn.Linear(2, 2), example_inputs=torch.zeros(1, 2))
    broken = {k: v for k, v in run.items() if k != "baseline"}
    with pytest.raises(ConfigError, match="'baseline'"):
        write_run_report(broken, tmp_path / "bad")
    stage = {k: v for k, v in run["stages"][0].items() if k != "macs"}
    with pytest.raises(ConfigError, match="'macs'"):
        write_run_report({**run, "stages": [stage]}, tmp_path / "bad2")
    assert not (tmp_path / "bad").exists()


def test_malformed_values_in_a_run_report_are_one_clear_error(run: dict, tmp_path) -> None:
    import copy

    def changed(edit) -> dict:
        r = copy.deepcopy(run)
        edit(r["stages"][0])
        return r

    for edit, fragment in ((lambda s: s.update(accuracy="0.5"), "accuracy = '0.5'"),
                           (lambda s: s.update(artifact_bytes=-3), "artifact_bytes = -3"),
                           (lambda s: next(iter(s["histograms"].values())).pop("counts"), "lacks counts")):
        with pytest.raises(ConfigError, match=fragment):
            write_run_report(changed(edit), tmp_path / "bad")
    empty_file = changed(lambda s: s.update(artifact_bytes=0))  # an empty artifact: a report, no ratio
    write_run_report(empty_file, tmp_path / "zero")
    assert (tmp_path / "zero" / "report.md").exists()
