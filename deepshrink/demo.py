"""The main job: Deep Compression end to end on the embedded MNIST digits, with reports and plots."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from deepshrink.artifact import StoragePolicy, load, save
from deepshrink.codec.container import read_container
from deepshrink.core.errors import DeepShrinkError
from deepshrink.core.fileio import atomic_write_text, ensure_dir
from deepshrink.data import load as load_data
from deepshrink.measure.accuracy import evaluate
from deepshrink.models import create
from deepshrink.pipelines.deep_compression import DeepCompression, DeepCompressionResult
from deepshrink.pipelines.recipes import Recipe, recipe
from deepshrink.report import deep_compression as dcr
from deepshrink.report.tables import markdown_table
from deepshrink.train import Trainer, seed_everything

DEMO_MODELS = ("lenet300", "lenet5")
DATASET = "mnist5k"
QUICK_TRAIN = 1024  # --quick trains on the first 1,024 digits: a smoke run, not a result


def _baseline(rec: Recipe, train: Dataset, folder: Path, seed: int, reuse: bool, progress: bool | None
              ) -> tuple[nn.Module, bool]:
    """Train the baseline, or reuse the artifact of an identical earlier run (same model, data, settings, seed
    and CPU thread count: float sums, hence the trained bits, depend on it)."""
    key = hashlib.sha256(json.dumps([rec.model, DATASET, rec.baseline.identity()], sort_keys=True).encode())
    fingerprint = key.hexdigest()[:16]
    path = folder / f"{rec.model}.seed{seed}.{fingerprint}.dsk"
    threads = torch.get_num_threads()
    if reuse and path.exists():
        try:
            if read_container(path, verify=False).meta.get("info", {}).get("threads") == threads:
                return load(path), True
        except DeepShrinkError:
            pass  # an unreadable cached baseline is simply retrained and overwritten
    seed_everything(seed)
    model = create(rec.model)
    Trainer(model, rec.baseline, progress=progress, description=f"{rec.model} baseline").fit(train)
    model.cpu().eval()
    save(model, path, StoragePolicy(sparse=False, coding="packed"), info={"stage": "baseline-trained", "threads": threads})
    return model, False


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def _model_report(rec: Recipe, res: DeepCompressionResult, seconds: float, reused: bool) -> dict[str, Any]:
    rows = dcr.layer_rows(res)
    return {
        "baseline": res.baseline.to_dict(),
        "stages": [s.to_dict() for s in res.stages],
        "fp32_bytes": res.fp32_bytes,
        "artifact": res.final.artifact,
        "artifact_bytes": res.final.artifact_bytes,
        "compression_ratio": res.compression_ratio,
        "accuracy_drop_points": 100.0 * (res.baseline.accuracy - res.final.accuracy),
        "roundtrip_max_abs_diff": res.roundtrip_max_abs_diff,
        "layers": rows,
        "total": dcr.total_row(res, rows),
        "meta_bytes": res.final.save_report.meta_bytes,
        "seconds": seconds,
        "baseline_reused": reused,
        "settings": {
            "baseline_train": asdict(rec.baseline),
            "prune_rounds": rec.compression.prune_rounds,
            "retrain": asdict(rec.compression.retrain),
            "cluster_finetune": asdict(rec.compression.cluster_finetune),
            "bias_dtype": rec.compression.bias_dtype,
            "layers": {k: asdict(v) for k, v in rec.compression.layers.items()},
        },
    }


def run_demo(out_dir: str | os.PathLike[str], *, seed: int = 0, quick: bool = False,
             models: tuple[str, ...] = DEMO_MODELS, recipe_name: str = "default", reuse: bool = True,
             progress: bool | None = None, baseline_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train (or reuse) baselines, run Deep Compression on each model, write report.json/.md and plots.

    Baselines are cached in ``baseline_dir`` (default ``out_dir/baselines``) keyed by model, data,
    training settings and seed, so runs of several recipes share them.
    """
    recipes = {name: recipe(name, recipe_name, seed=seed, quick=quick) for name in models}  # fail early
    out = ensure_dir(out_dir)
    data = load_data(DATASET)
    example = data.test.tensors[0][:1]
    train = Subset(data.train, range(QUICK_TRAIN)) if quick else data.train
    report: dict[str, Any] = {"dataset": DATASET, "seed": seed, "quick": quick, "recipe": recipe_name,
                              "machine": _machine(), "models": {}}
    results: dict[str, DeepCompressionResult] = {}
    for name in models:
        rec = recipes[name]
        start = time.perf_counter()
        cache = ensure_dir(baseline_dir if baseline_dir is not None else out / "baselines")
        model, reused = _baseline(rec, train, cache, seed, reuse and not quick, progress)
        seed_everything(seed)
        res = DeepCompression(rec.compression, progress=progress).run(model, train, data.test, example,
                                                                      out, tag=name)
        results[name] = res
        report["models"][name] = _model_report(rec, res, time.perf_counter() - start, reused)
    report["plots"] = _plots(results, out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(out / "report.md", render_markdown(report))
    return report


def _plots(results: dict[str, DeepCompressionResult], out: Path) -> dict[str, str]:
    from deepshrink.report.plots import plot_stage_sizes, plot_weight_histograms

    paths = {}
    for name, res in results.items():
        before = {k: v.numpy() for k, v in res.weights_before.items()}
        after = {k: v.numpy() for k, v in res.weights_after.items()}
        hist = plot_weight_histograms(before, after, out / f"{name}.weights.png",
                                      f"{name}: weights before pruning vs after sharing (non-zeros)")
        stages = [("fp32", res.baseline.artifact_bytes)] + [(s.name, s.artifact_bytes) for s in res.stages]
        sizes = plot_stage_sizes(stages, out / f"{name}.sizes.png", f"{name}: artifact bytes per stage")
        paths[f"{name}.weights"] = hist.name
        paths[f"{name}.sizes"] = sizes.name
    return paths


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: per-model stage table and per-layer table shaped like the paper's Tables 2-3."""
    lines = [f"# Deep Compression on {report['dataset']} (seed {report['seed']}, recipe {report['recipe']})", ""]
    for name, m in report["models"].items():
        lines += [f"## {name}", "",
                  f"Compression {m['compression_ratio']:.1f}x: {m['fp32_bytes']:,} fp32 bytes -> "
                  f"{m['artifact_bytes']:,} bytes in `{Path(m['artifact']).name}` "
                  f"(header + metadata {m['meta_bytes']:,} bytes). Accuracy "
                  f"{100 * m['baseline']['accuracy']:.1f}% -> {100 * m['stages'][-1]['accuracy']:.1f}% "
                  f"({-m['accuracy_drop_points']:+.1f} points); reloaded outputs differ by at most "
                  f"{m['roundtrip_max_abs_diff']:.3g}.", ""]
        stages = [m["baseline"], *m["stages"]]
        lines += [markdown_table(dcr.STAGE_HEADERS, [dcr.stage_cells(s, m["fp32_bytes"]) for s in stages]), ""]
        lines += [markdown_table(dcr.LAYER_HEADERS, [dcr.table_cells(r) for r in [*m["layers"], m["total"]]]),
                  ""]
        lines += ["Bits are per stored weight (fillers included in index bits); entropy is of each stream's "
                  "symbols in bits/symbol, the floor Huffman approaches. Sizes are % of the layer's fp32 bytes; "
                  "the total row is the whole file, header, metadata, biases and codebooks included.", ""]
        for key in ("weights", "sizes"):
            plot = report.get("plots", {}).get(f"{name}.{key}")
            if plot:
                lines += [f"![{name} {key}]({plot})", ""]
    return "\n".join(lines)


def check_reload(report: dict[str, Any], name: str) -> float:
    """Accuracy of the final artifact of ``name`` loaded back from disk (used by tests and benchmarks)."""
    data = load_data(report["dataset"])
    return evaluate(load(report["models"][name]["artifact"]), data.test).accuracy
