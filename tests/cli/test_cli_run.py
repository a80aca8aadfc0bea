"""`deepshrink run / export / report` through the real entry point: a smoke run, and a table of bad inputs
that must each give one clear line on stderr, a non-zero exit and no output folder left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepshrink
from deepshrink.cli import main

ENV = {**os.environ, "DEEPSHRINK_PROGRESS": "0"}
TINY = """name: tiny_cli
model: mlp
model_args: {in_features: 64, hidden: [24]}
dataset: digits
stages:
  - kind: finetune
    epochs: 2
    optimizer: adam
    lr: 0.01
  - kind: prune
    method: magnitude
    sparsity: 0.7
  - kind: cluster
    bits: 4
  - kind: encode
    coding: auto
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepshrink", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY)
    out = base / "run"
    proc = _cli("run", str(recipe), "--out", str(out), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [s["name"] for s in report["stages"]] == ["prune", "cluster", "encode"]
    return out


@pytest.mark.slow
def test_run_writes_artifacts_state_and_reports(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    assert state["complete"] is True
    final = report["stages"][-1]
    assert final["artifact_bytes"] == (run_dir / "03-encode.dsk").stat().st_size
    assert report["compression_ratio"] == pytest.approx(4 * report["baseline"]["params"] / final["artifact_bytes"])
    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    model = deepshrink.load(run_dir / "03-encode.dsk")
    w = model.layers.fc1.weight
    assert abs(float((w == 0).float().mean()) - 0.7) < 0.01
    assert torch.unique(w[w != 0]).numel() <= 16


@pytest.mark.slow
def test_rerun_is_resumed_and_report_export_work(run_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    proc = _cli("run", str(run_dir.parent / "tiny.yaml"), "--out", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipped: already complete") == 4
    assert "tiny_cli" in proc.stdout and "prune" in proc.stdout
    assert main(["report", str(run_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stages"][-1]["artifact_bytes"] == (run_dir / "03-encode.dsk").stat().st_size
    dest = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir / "03-encode.dsk"), "--format", "safetensors", "--out", str(dest)]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(dest))
    model = deepshrink.load(run_dir / "03-encode.dsk")
    assert torch.equal(tensors["layers.fc1.weight"], model.layers.fc1.weight)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run_dir / "03-encode.dsk"), "--format", "onnx", "--input-shape", "1,8,8",
                 "--out", str(onnx_file)]) == 0
    import onnxruntime as ort

    x = torch.rand(5, 1, 8, 8)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-5)


def test_export_of_a_user_model_needs_its_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    from deepshrink.recipe.models import model_factory

    (tmp_path / "clinet.py").write_text("from torch import nn\n\ndef build():\n"
                                        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = model_factory("clinet:build")()  # as `deepshrink run --model clinet:build` builds it
    deepshrink.save(net, tmp_path / "n.dsk")
    dest = tmp_path / "n.safetensors"
    assert main(["export", str(tmp_path / "n.dsk"), "--format", "safetensors", "--out", str(dest)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "clinet:build" in err and "--model" in err
    assert not dest.exists()
    assert main(["export", str(tmp_path / "n.dsk"), "--format", "safetensors", "--out", str(dest),
                 "--model", "clinet:build"]) == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(dest))["1.weight"], net[1].weight)


def test_help_lists_the_commands_with_examples(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needed in ("deepshrink run ", "deepshrink export ", "deepshrink report "):
        assert needed in text


def _recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _bad_cases(tmp: Path) -> list[tuple[str, list[str], str, int]]:
    """(id, argv, expected fragment of the one error line, expected exit code)."""
    good = _recipe(tmp, TINY, "good.yaml")
    swap = lambda old, new, name: _recipe(tmp, TINY.replace(old, new), name)  # noqa: E731
    (tmp / "emptydata").mkdir()
    (tmp / "wrongdata").mkdir()
    (tmp / "wrongdata" / "images.csv").write_text("1,2,3\n")
    (tmp / "afile").write_text("x")
    (tmp / "weights.safetensors").write_bytes(b"not safetensors at all")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp / "other.safetensors"))
    (tmp / "corrupt.dsk").write_bytes(b"DSHRINK\0" + b"\0" * 80)
    from deepshrink.models import create

    deepshrink.save(create("mlp", in_features=64, hidden=[8]), tmp / "mlp.dsk")
    out = str(tmp / "out")
    return [
        ("missing recipe", ["run", str(tmp / "nope.yaml"), "--out", out], "does not exist", 2),
        ("yaml syntax", ["run", _recipe(tmp, "stages: [\n", "syn.yaml"), "--out", out], "YAML syntax error", 2),
        ("unknown stage", ["run", swap("kind: cluster", "kind: squash", "k.yaml"), "--out", out],
         "k.yaml:13: stage 2: kind: unknown stage kind 'squash'", 2),
        ("negative ratio", ["run", swap("sparsity: 0.7", "sparsity: -0.2", "n.yaml"), "--out", out],
         "n.yaml:12: stage 1 (prune): sparsity", 2),
        ("bits 0", ["run", swap("bits: 4", "bits: 0", "b0.yaml"), "--out", out], "b0.yaml:14: stage 2 (cluster): bits", 2),
        ("bits 9", ["run", swap("bits: 4", "bits: 9", "b9.yaml"), "--out", out], "stage 2 (cluster): bits", 2),
        ("k-means on masked weights", ["run", swap("kind: cluster\n    bits: 4", "kind: quantize\n    scheme: kmeans\n"
                                                   "    bits: 4", "km.yaml"), "--out", out],
         "stage 2 (quantize): scheme kmeans needs plain weights", 1),
        ("structured after masks", ["run", swap("kind: cluster\n    bits: 4", "kind: prune\n    method: structured\n"
                                                "    sparsity: 0.5", "sm.yaml"), "--out", out],
         "sm.yaml:13: stage 2 (prune): structured pruning removes whole channels of plain weights, and stage 1 left "
         "pruning masks", 1),
        ("structured pattern typo", ["run", swap("method: magnitude\n    sparsity: 0.7", "method: structured\n"
                                                 "    sparsity: 0.5\n    overrides: {nosuch*: 0.3}", "so.yaml"),
                                     "--out", out], "so.yaml:10: stage 1 (prune): overrides pattern 'nosuch*' matches no", 1),
        ("quantize skip typo", ["run", swap("kind: cluster\n    bits: 4", "kind: quantize\n    scheme: int\n"
                                            "    bits: 4\n    skip: [nosuch*]", "sk.yaml"), "--out", out],
         "sk.yaml:13: stage 2 (quantize): skip: pattern 'nosuch*' matches no selected layer", 1),
        ("negative layer width", ["run", good, "--model-args", '{"in_features": 64, "hidden": [-1]}', "--out", out],
         "model 'mlp': bad arguments", 1),
        ("sample too large to trace", ["export", str(tmp / "mlp.dsk"), "--format", "onnx", "--input-shape",
                                       "100000,100000"], "values a sample", 1),
        ("sensitivity grid", ["sensitivity", "--model", "mlp", "--data", "digits", "--keeps", "1.0,2.5", "--out",
                              out], "kept fraction", 2),
        ("sparsity 1.5", ["run", swap("sparsity: 0.7", "sparsity: 1.5", "s.yaml"), "--out", out], "sparsity", 2),
        ("unknown key", ["run", swap("bits: 4", "bitz: 4", "u.yaml"), "--out", out], "bitz: unknown key", 2),
        ("wrong type", ["run", swap("epochs: 2", "epochs: two", "t.yaml"), "--out", out], "epochs", 2),
        ("unknown layer pattern", ["run", swap("sparsity: 0.7", "sparsity: 0.7\n    layers: [conv9]", "l.yaml"),
                                   "--out", out], "l.yaml:10: stage 1 (prune): layer pattern 'conv9'", 1),
        ("unknown zoo model", ["run", good, "--model", "resnet9000", "--out", out], "unknown model 'resnet9000'", 1),
        ("unknown model path", ["run", good, "--model", "no_such_pkg.nets:build", "--out", out],
         "cannot import 'no_such_pkg.nets'", 1),
        ("factory missing", ["run", good, "--model", "json:nothing_here", "--out", out], "no callable 'nothing_here'", 1),
        ("unknown dataset", ["run", good, "--data", "imagenet22k", "--out", out], "unknown dataset 'imagenet22k'", 1),
        ("missing data folder", ["run", good, "--data", str(tmp / "nodata"), "--out", out], "does not exist", 1),
        ("empty data folder", ["run", good, "--data", str(tmp / "emptydata"), "--out", out], "emptydata", 1),
        ("wrong data format", ["run", good, "--data", str(tmp / "wrongdata"), "--out", out], "wrongdata", 1),
        ("data not a folder", ["run", good, "--data", str(tmp / "afile"), "--out", out], "not a folder", 1),
        ("output not writable", ["run", good, "--out", str(tmp / "afile" / "sub")], "cannot create output folder", 1),
        ("missing weights", ["run", good, "--weights", str(tmp / "w.safetensors"), "--out", out], "does not exist", 1),
        ("corrupt weights", ["run", good, "--weights", str(tmp / "weights.safetensors"), "--out", out],
         "cannot read weights", 1),
        ("weights of another model", ["run", good, "--weights", str(tmp / "other.safetensors"), "--out", out],
         "do not fit the model", 1),
        ("weights without model", ["run", _recipe(tmp, TINY.replace("model: mlp\n", ""), "nm.yaml"), "--weights",
                                   str(tmp / "other.safetensors"), "--out", out], "--weights needs --model", 2),
        ("no dataset", ["run", _recipe(tmp, TINY.replace("dataset: digits\n", ""), "nd.yaml"), "--out", out],
         "no dataset given", 1),
        ("report of no run", ["report", str(tmp / "emptydata")], "no report.json", 1),
        ("export missing", ["export", str(tmp / "nope.dsk"), "--format", "onnx"], "does not exist", 1),
        ("export without shape", ["export", str(tmp / "mlp.dsk"), "--format", "onnx"], "--input-shape", 1),
        ("export of a wrong shape", ["export", str(tmp / "mlp.dsk"), "--format", "onnx", "--input-shape", "1,9,9",
                                     "--out", str(tmp / "m.onnx")], "forward on the example inputs failed", 1),
        ("export of a user model without it", ["export", str(tmp / "mlp.dsk"), "--format", "onnx", "--input-shape",
                                               "1,8,8", "--model", "nosuchpkg.nets:build"], "cannot import", 1),
        ("export corrupt", ["export", str(tmp / "corrupt.dsk"), "--format", "safetensors"], "corrupt.dsk", 3),
    ]


def test_bad_inputs_give_one_line_and_leave_no_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = _bad_cases(tmp_path)
    assert len(cases) >= 20
    for case, argv, fragment, code in cases:
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == code, f"{case}: exit {rc}, stderr {err!r}"
        assert err.startswith("error: ") and "\n" not in err, f"{case}: {err!r}"
        assert fragment in err, f"{case}: {err!r}"
        assert "Traceback" not in err
        assert not (tmp_path / "out").exists(), f"{case}: left an output folder behind"


def test_bad_argument_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "x.yaml", "--model-args", "[1, 2]"])
    assert info.value.code == 2
    assert "JSON object" in capsys.readouterr().err
    for argv, fragment in ((["run", "x.yaml", "--seed", str(2**64)], "--seed: must be in 0..4294967295"),
                           (["run", "x.yaml", "--threads", str(2**31)], "--threads: must be in 0..4096"),
                           (["demo", "--seed", "-5"], "--seed: must be in 0..")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and fragment in capsys.readouterr().err


def test_restart_leaves_nothing_of_the_previous_run_and_report_refuses_an_unfinished_one(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", _recipe(tmp_path, TINY), "--out", str(out), "--no-progress", "--quick"]) == 0
    assert (out / "03-encode.dsk").exists() and (out / "report.json").exists()
    from deepshrink.recipe import parse_recipe
    from deepshrink.recipe.runner import run_recipe

    other, _ = parse_recipe(TINY.replace("name: tiny_cli", "name: other"), "o.yaml")

    def stop(event: dict) -> None:
        if event.get("event") == "start":
            raise KeyboardInterrupt  # Ctrl-C as the restarted run begins its first stage

    with pytest.raises(KeyboardInterrupt):
        run_recipe(other, out=out, restart=True, quick=True, progress=False, on_event=stop)
    assert not json.loads((out / "state.json").read_text())["complete"]
    assert not list(out.glob("0*-*.dsk")) and not (out / "report.json").exists()  # nothing of the old run
    capsys.readouterr()
    (out / "report.json").write_text(json.dumps({"baseline": {}, "stages": []}))
    (out / "state.json").write_text(json.dumps({"complete": False}))
    assert main(["report", str(out)]) == 1
    assert "holds a run in progress" in capsys.readouterr().err


def test_a_reader_that_goes_away_is_no_error(tmp_path: Path) -> None:
    from deepshrink.models import create

    deepshrink.save(create("lenet5"), tmp_path / "m.dsk")
    proc = subprocess.Popen([sys.executable, "-m", "deepshrink", "inspect", str(tmp_path / "m.dsk"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # as `deepshrink inspect F --json | head -0` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_export_rebuilds_a_user_model_with_the_arguments_its_run_recorded(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.recipe.models import model_factory

    (tmp_path / "widenet.py").write_text("from torch import nn\n\ndef build(width=64):\n"
                                         "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(),"
                                         " nn.Linear(width, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = model_factory("widenet:build", {"width": 32})()  # `run --model widenet:build --model-args ...`
    deepshrink.save(net, tmp_path / "n.dsk")
    dest = tmp_path / "n.safetensors"
    assert main(["export", str(tmp_path / "n.dsk"), "--format", "safetensors", "--out", str(dest),
                 "--model", "widenet:build"]) == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(dest))["1.weight"], net[1].weight)
    # explicit arguments win; ones that do not fit the file are one clear error
    assert main(["export", str(tmp_path / "n.dsk"), "--format", "safetensors", "--out", str(dest),
                 "--model", "widenet:build", "--model-args", '{"width": 64}']) == 1
