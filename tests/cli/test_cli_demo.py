"""End-to-end: ``deepshrink demo --quick`` through the real entry point, and the report checked against files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepshrink
from deepshrink.data import load as load_data
from deepshrink.measure import evaluate
from deepshrink.models import create

ENV = {**os.environ, "DEEPSHRINK_PROGRESS": "0"}

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deepshrink", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = _cli("demo", "--quick", "--out", str(out), "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "lenet300" in proc.stdout and "lenet5" in proc.stdout
    return out

def test_report_json_shape(demo_dir: Path):
    report = json.loads((demo_dir / "report.json").read_text())
    assert set(report["models"]) == {"lenet300", "lenet5"}
    for m in report["models"].values():
        assert [s["name"] for s in m["stages"]] == ["pruned", "quantized", "huffman"]
        for s in [m["baseline"], *m["stages"]]:
            assert {"name", "accuracy", "artifact_bytes", "params", "nonzeros", "macs"} <= set(s)

def test_report_numbers_match_the_files(demo_dir: Path):
    report = json.loads((demo_dir / "report.json").read_text())
    test = load_data("mnist5k").test
    for name, m in report["models"].items():
        fp32 = 4 * sum(p.numel() for p in create(name).parameters())
        assert m["fp32_bytes"] == fp32
        for s in [m["baseline"], *m["stages"]]:
            assert s["artifact_bytes"] == os.path.getsize(s["artifact"])
        assert m["artifact_bytes"] == os.path.getsize(m["artifact"])
        assert m["compression_ratio"] == pytest.approx(fp32 / os.path.getsize(m["artifact"]))
        loaded = deepshrink.load(m["artifact"])
        assert evaluate(loaded, test).accuracy == pytest.approx(m["stages"][-1]["accuracy"], abs=1e-9)
        nnz = sum(int((t != 0).sum()) for t in loaded.state_dict().values())
        assert nnz <= m["stages"][-1]["nonzeros"]
        assert m["roundtrip_max_abs_diff"] == 0.0
        # sizes shrink stage by stage and the per-layer kept fraction follows the recipe
        sizes = [m["baseline"]["artifact_bytes"]] + [s["artifact_bytes"] for s in m["stages"]]
        assert sizes == sorted(sizes, reverse=True)
        for row in m["layers"]:
            keep = m["settings"]["layers"][row["layer"]]["keep"]
            assert row["nonzeros"] == max(1, round(keep * row["weights"]))
            # bits per stored weight, as the P+Q+H column (fillers included): at least the packed width b
            assert row["index_bits_pq"] >= row["index_width_pq"] or row["index_width_pq"] is None
            assert row["index_bits_pqh"] is None or row["index_bits_pqh"] <= row["index_bits_pq"] + 1e-9

def test_report_files_and_plots_exist(demo_dir: Path):
    md = (demo_dir / "report.md").read_text()
    assert "## lenet300" in md and "size P+Q+H %" in md
    for png in demo_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(demo_dir.glob("*.png"))) == 4

def test_inspect_reads_the_final_artifact(demo_dir: Path):
    art = demo_dir / "lenet5.huffman.dsk"
    proc = _cli("inspect", str(art), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["checksum_ok"] is True
    assert info["file_bytes"] == os.path.getsize(art)
    fc1 = next(t for t in info["layers"] if t["name"] == "fc1.weight")
    assert fc1["encoding"] == "sparse" and fc1["weight_bits"] == 4
    assert set(fc1["streams"]) == {"index", "values", "codebook"}
    human = _cli("inspect", str(art))
    assert human.returncode == 0 and "checksum ok" in human.stdout

def test_inspect_of_a_corrupt_file_is_one_line_and_nonzero(demo_dir: Path, tmp_path: Path):
    data = bytearray((demo_dir / "lenet300.huffman.dsk").read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.dsk"
    bad.write_bytes(bytes(data))
    proc = _cli("inspect", str(bad))
    assert proc.returncode == 3
    assert "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    bad.write_bytes(bytes(data[:100]))
    proc = _cli("inspect", str(bad))
    assert proc.returncode == 3 and "truncated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

@pytest.mark.parametrize("args,code,needle", [
    (["inspect", "/nonexistent/x.dsk"], 1, "no such artifact"),
    (["demo", "--quick", "--models", "resnet9000"], 1, "no Deep Compression recipe for model"),
    (["demo", "--quick", "--out", "/proc/forbidden"], 1, "cannot create output folder"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_invocations_fail_cleanly(args, code, needle, tmp_path):
    if "--out" not in args and args[0] == "demo":
        args = [*args, "--out", str(tmp_path / "o")]
    proc = _cli(*args)
    assert proc.returncode == code
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing half-made is left behind

def test_help_shows_examples():
    proc = _cli("--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "deepshrink demo" in proc.stdout

def test_baseline_cache_round_trip(tmp_path):
    from deepshrink.demo import _baseline
    from deepshrink.pipelines.recipes import recipe

    rec = recipe("lenet300", quick=True)
    train = torch.utils.data.Subset(load_data("mnist5k").train, range(256))
    model, reused = _baseline(rec, train, tmp_path, 0, True, False)
    again, reused_again = _baseline(rec, train, tmp_path, 0, True, False)
    assert (reused, reused_again) == (False, True)
    x = load_data("mnist5k").test.tensors[0][:8]
    assert torch.equal(model(x), again(x))
    threads = torch.get_num_threads()
    try:  # a baseline trained at another thread count has other bits: it is retrained, not reused
        torch.set_num_threads(threads + 1)
        _, reused_other = _baseline(rec, train, tmp_path, 0, True, False)
    finally:
        torch.set_num_threads(threads)
    assert reused_other is False


def test_inspect_shows_packed_low_bit_weights(tmp_path):
    from deepshrink.artifact.quantized import save_quantized
    from deepshrink.quantize import IntWeightConfig, quantize

    path = tmp_path / "q4.dsk"
    save_quantized(quantize(create("lenet300"), IntWeightConfig(bits=4)), path)
    proc = _cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    fc1 = next(t for t in json.loads(proc.stdout)["layers"] if t["name"] == "fc1.weight")
    assert fc1["weight_bits"] == 4 and fc1["streams"]["codes"] == 300 * 784 // 2
