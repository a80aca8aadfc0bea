"""Per-run reports: measure each stage of a compression run, then write report.json, .md and .html.

A *stage* is a plain JSON-ready dict made by :func:`record_stage` (accuracy, artifact bytes of a
real file, params, non-zeros, MACs, latency, per-layer sparsity and bits, weight histograms).
A *run* is ``{"model", "dataset", "recipe", "baseline": stage, "stages": [stage, ...]}``;
:func:`write_run_report` turns it into ``report.json``, ``report.md`` (PNG plots beside it) and one
self-contained ``report.html`` (plots embedded), every file written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.core.fileio import atomic_write_bytes, atomic_write_text, ensure_dir
from deepshrink.measure.accuracy import evaluate
from deepshrink.measure.count import count_nonzeros, count_params, layer_stats, weight_codes
from deepshrink.measure.flops import count_macs
from deepshrink.measure.latency import measure_latency
from deepshrink.measure.size import file_bytes
from deepshrink.report.tables import format_bytes, markdown_table

HIST_BINS = 60
MAX_SPIKES = 256  # at most this many distinct non-zero values: store them exactly (shared codebook)
RUN_KEYS = ("model", "dataset", "recipe", "baseline", "stages")
STAGE_KEYS = ("name", "kind", "accuracy", "artifact_bytes", "params", "nonzeros", "macs", "latency_ms")


def _dtype_bits(t: torch.Tensor) -> int:
    return int(torch.finfo(t.dtype).bits if t.is_floating_point() else torch.iinfo(t.dtype).bits)


def _module_bits(module: nn.Module, weight: torch.Tensor) -> int:
    """Bits per stored weight value: quantizer bits, shared-codebook index bits, a code-storing layer's code
    width, else the dtype's width."""
    codes = weight_codes(module)
    if codes is not None:
        bits = getattr(module, "bits", None)
        return bits if isinstance(bits, int) and not isinstance(bits, bool) else _dtype_bits(codes)
    if parametrize.is_parametrized(module, "weight"):
        for p in reversed(list(module.parametrizations["weight"])):
            bits = getattr(p, "bits", None)
            if isinstance(bits, int):
                return bits
            k = getattr(p, "k", None)  # SharedCodebook: k centroids plus the zero slot for pruned weights
            if isinstance(k, int):
                return max(1, math.ceil(math.log2(max(2, k))))
    return _dtype_bits(weight)


def _artifact_bits(path: str | os.PathLike[str] | None) -> dict[str, int]:
    """Weight bits per tensor name as the artifact stores them (codebook or integer codes)."""
    if path is None:
        return {}
    try:
        from deepshrink.artifact.inspect import describe

        layers = describe(path)["layers"]
    except Exception:  # not a deepshrink artifact (e.g. ONNX): fall back to the in-memory model
        return {}
    out: dict[str, int] = {}
    for entry in layers:
        bits = entry.get("weight_bits")
        if isinstance(bits, int):
            out[entry["name"]] = bits
        elif entry.get("dtype") == "float16":
            out[entry["name"]] = 16
    return out


def weight_histogram(weight: torch.Tensor) -> dict[str, Any]:
    """Histogram data of a layer's non-zero weights: exact (value, count) spikes if few, else bins."""
    flat = weight.detach().float().cpu().numpy().ravel()
    nz = flat[(flat != 0) & np.isfinite(flat)]
    out: dict[str, Any] = {"numel": int(flat.size), "nonzeros": int(nz.size)}
    if nz.size == 0:
        out.update(kind="empty", edges=[], counts=[])
        return out
    values, counts = np.unique(nz, return_counts=True)
    if values.size <= MAX_SPIKES:
        out.update(kind="spikes", values=[float(v) for v in values], counts=[int(c) for c in counts])
    else:
        hist, edges = np.histogram(nz, bins=HIST_BINS)
        out.update(kind="bins", edges=[float(e) for e in edges], counts=[int(c) for c in hist])
    return out


def _layers(model: nn.Module, artifact_path: str | os.PathLike[str] | None) -> tuple[list[dict], dict]:
    stored = _artifact_bits(artifact_path)
    modules = dict(model.named_modules())
    rows, hists = [], {}
    for st in layer_stats(model):
        module = modules[st.name]
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):  # int8 codes: the dequantized weight they stand for
            weight = module.weight_float() if hasattr(module, "weight_float") else weight_codes(module).float()
        bits = stored.get(f"{st.name}.weight", stored.get(f"{st.name}.codes", _module_bits(module, weight)))
        with torch.no_grad():  # the effective weight (masked, shared or dequantized), counted directly
            numel, nz = weight.numel(), int((weight != 0).sum().item())
            hists[st.name] = weight_histogram(weight)
            if isinstance(getattr(type(module), "weight", None), property):  # computed (HashedLinear): count
                bias = getattr(module, "bias", None)  # what is stored, as layer_stats does, less the bias
                b = bias if isinstance(bias, torch.Tensor) else torch.zeros(0)
                numel, nz = st.params - b.numel(), st.nonzeros - int((b != 0).sum().item())
        rows.append({"name": st.name, "type": st.type, "shape": list(st.shape), "params": numel,
                     "nonzeros": nz, "sparsity": 1.0 - nz / numel if numel else 0.0, "bits": bits})
    return rows, hists


def record_stage(name: str, kind: str, model: nn.Module, *, example_inputs: Any, eval_data: Any = None,
                 artifact_path: str | os.PathLike[str] | None = None, seconds: float | None = None,
                 latency: bool = True) -> dict[str, Any]:
    """Measure ``model`` as the stage ``name`` (of type ``kind``, e.g. prune/quantize/baseline).

    Accuracy and loss need ``eval_data``; artifact bytes are the size of the real file at
    ``artifact_path`` (None when no file was written); latency is the median of 30 timed calls on
    ``example_inputs``. Unmeasured values are None. The result is a JSON-ready dict.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("record_stage: the stage name must be a non-empty string")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"record_stage: stage {name!r} needs a non-empty kind")
    if not isinstance(model, nn.Module):
        raise ModelError(f"record_stage: stage {name!r}: expected a torch.nn.Module, got {type(model).__name__}")
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds >= 0):
        raise ConfigError(f"record_stage: stage {name!r}: seconds must be >= 0, got {seconds!r}")
    result = evaluate(model, eval_data) if eval_data is not None else None
    layers, hists = _layers(model, artifact_path)
    return {
        "name": name,
        "kind": kind,
        "accuracy": result.accuracy if result else None,
        "loss": result.loss if result else None,
        "artifact": os.fspath(artifact_path) if artifact_path is not None else None,
        "artifact_bytes": file_bytes(artifact_path) if artifact_path is not None else None,
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "macs": count_macs(model, example_inputs),
        "latency_ms": measure_latency(model, example_inputs).median_ms if latency else None,
        "seconds": float(seconds) if seconds is not None else None,
        "layers": layers,
        "histograms": hists,
    }


def check_run(run: Mapping[str, Any]) -> None:
    """A clear ConfigError naming the first missing key of the run or of one of its stages."""
    if not isinstance(run, Mapping):
        raise ConfigError(f"run report: expected a dict, got {type(run).__name__}")
    for key in RUN_KEYS:
        if key not in run:
            raise ConfigError(f"run report: missing key {key!r}")
    if not isinstance(run["stages"], list):
        raise ConfigError("run report: 'stages' must be a list of stage dicts")
    for i, stage in enumerate([run["baseline"], *run["stages"]]):
        where = "baseline" if i == 0 else f"stage {i}"
        if not isinstance(stage, Mapping):
            raise ConfigError(f"run report: {where} is not a dict (use record_stage)")
        for key in STAGE_KEYS:
            if key not in stage:
                raise ConfigError(f"run report: {where} ({stage.get('name', '?')}) lacks key {key!r}")
        for key in STAGE_KEYS[2:]:  # the measures: numbers, or null when not measured
            value = stage[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value != value or value < 0):
                raise ConfigError(f"run report: {where} ({stage.get('name', '?')}) has {key} = {value!r}, "
                                  "not a non-negative number or null")
        hists = stage.get("histograms")  # optional, per layer: what the histogram plots read
        if hists is not None and not isinstance(hists, Mapping):
            raise ConfigError(f"run report: {where} histograms must be a dict of layer -> histogram")
        for layer, hist in (hists or {}).items():
            _check_hist(hist, f"{where} histogram of {layer}")


def _check_hist(hist: Any, where: str) -> None:
    """ConfigError unless ``hist`` is a histogram record the plots can draw (``weight_histogram``'s form)."""
    if hist is None:
        return
    if not isinstance(hist, Mapping):
        raise ConfigError(f"run report: {where} is not a dict")
    need = {None: (), "empty": (), "spikes": ("values", "counts", "nonzeros"), "bins": ("edges", "counts", "nonzeros")}
    if hist.get("kind") not in need:
        raise ConfigError(f"run report: {where} has an unknown kind {hist.get('kind')!r}")
    missing = [k for k in need[hist.get("kind")] if k not in hist]
    if missing:
        raise ConfigError(f"run report: {where} lacks {', '.join(missing)}")


def _ratio(base: float | None, value: float | None) -> float | None:
    """``base / value``: how many times smaller/faster the stage is; None if either is missing."""
    if base is None or value is None or value <= 0:
        return None
    return base / value


def stage_rows(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stage (baseline first) with every measure and its change relative to the baseline."""
    base = run["baseline"]
    rows = []
    for stage in [base, *run["stages"]]:
        acc, bacc = stage.get("accuracy"), base.get("accuracy")
        rows.append({
            "stage": stage["name"], "kind": stage["kind"],
            "accuracy_pct": 100.0 * acc if acc is not None else None,
            "delta_pt": 100.0 * (acc - bacc) if acc is not None and bacc is not None else None,
            "artifact_bytes": stage["artifact_bytes"],
            "size_x": _ratio(base["artifact_bytes"], stage["artifact_bytes"]),
            "params": stage["params"], "params_x": _ratio(base["params"], stage["params"]),
            "nonzeros": stage["nonzeros"], "nonzeros_x": _ratio(base["nonzeros"], stage["nonzeros"]),
            "macs": stage["macs"], "macs_x": _ratio(base["macs"], stage["macs"]),
            "latency_ms": stage["latency_ms"], "speedup_x": _ratio(base["latency_ms"], stage["latency_ms"]),
            "seconds": stage.get("seconds"),
        })
    return rows


STAGE_HEADERS = ["stage", "kind", "accuracy %", "Δ pt", "artifact bytes", "size ×", "params", "params ×",
                 "non-zeros", "nz ×", "MACs", "MACs ×", "latency ms", "speed-up ×", "seconds"]
_STAGE_KEYS = ["stage", "kind", "accuracy_pct", "delta_pt", "artifact_bytes", "size_x", "params", "params_x",
               "nonzeros", "nonzeros_x", "macs", "macs_x", "latency_ms", "speedup_x", "seconds"]


def stage_cells(row: Mapping[str, Any]) -> list[object]:
    """The row's cells in STAGE_HEADERS order (Δ pt carries its sign)."""
    cells: list[object] = [row[k] for k in _STAGE_KEYS]
    if row["delta_pt"] is not None:
        cells[3] = f"{row['delta_pt']:+.2f}"
    return cells


LAYER_HEADERS = ["layer", "type", "shape", "weights", "baseline sparsity %", "final sparsity %",
                 "baseline bits", "final bits"]


def layer_rows(run: Mapping[str, Any]) -> list[list[object]]:
    """Per-layer sparsity and bits, baseline against the last stage."""
    base = {layer["name"]: layer for layer in run["baseline"].get("layers", [])}
    final_stage = run["stages"][-1] if run["stages"] else run["baseline"]
    rows = []
    for layer in final_stage.get("layers", []):
        b = base.get(layer["name"], {})
        rows.append([layer["name"], layer["type"], "x".join(map(str, layer["shape"])), layer["params"],
                     100.0 * b["sparsity"] if "sparsity" in b else None, 100.0 * layer["sparsity"],
                     b.get("bits"), layer["bits"]])
    return rows


TRIAL_HEADERS = ["#", "phase", "kept fraction per layer", "bits per layer", "val accuracy %", "val Δ pt",
                 "± pt (1 s.e.)", "bytes", "bytes are", "within budget", "Pareto", "elapsed s"]


def trial_rows(run: Mapping[str, Any]) -> list[list[object]]:
    """One row per setting a search tried (``run["trials"]``), in the order tried."""
    rows = []
    for t in run.get("trials", []):
        plan = ", ".join(f"{k} {v:.3g}" for k, v in (t.get("plan") or {}).items())
        bits = ", ".join(f"{k} {v}" for k, v in (t.get("bits") or {}).items()) or "-"
        rows.append([t.get("n"), t.get("phase"), plan, bits, 100.0 * t["val_accuracy"],
                     f"{-t['val_drop_pt']:+.2f}",
                     f"{t['val_drop_se_pt']:.2f}" if t.get("val_drop_se_pt") is not None else "-",
                     t.get("bytes"), t.get("bytes_kind"), bool(t.get("accepted")),
                     bool(t.get("pareto")), t.get("elapsed_s")])
    return rows


def summary_line(run: Mapping[str, Any]) -> str:
    """One sentence: final size, ratio and accuracy change against the baseline."""
    rows = stage_rows(run)
    stored = [r for r in rows[1:] if r["kind"] != "export"]  # an export row measures another file format
    first, last = rows[0], (stored[-1] if stored else rows[0])
    parts = [f"{run['model']} on {run['dataset']}, recipe {run['recipe']}: {len(rows) - 1} stage(s)."]
    if last["artifact_bytes"] and first["artifact_bytes"] and last["size_x"] is not None:
        ratio = run.get("compression_ratio")
        also = f"; compression ratio {ratio:.1f}x = fp32 parameter bytes / file" if ratio else ""
        parts.append(f"Artifact {format_bytes(first['artifact_bytes'])} -> {format_bytes(last['artifact_bytes'])}"
                     f" ({last['size_x']:.1f}x smaller than the baseline file{also}).")
    if last["delta_pt"] is not None:
        parts.append(f"Accuracy {first['accuracy_pct']:.2f}% -> {last['accuracy_pct']:.2f}% "
                     f"({last['delta_pt']:+.2f} points).")
    return " ".join(parts)


QUALITY_HEADERS = ["stage", "retrieval agreement %", "mean cosine", "min cosine"]


def quality_rows(run: Mapping[str, Any]) -> list[list[object]]:
    """Label-free scores of sentence-encoder runs (stages that carry ``cosine``); empty otherwise."""
    stages = [run["baseline"], *run["stages"]]
    return [[s["name"], 100.0 * s["accuracy"] if s.get("accuracy") is not None else None,
             f"{s['cosine']:.4f}", f"{s['min_cosine']:.4f}" if s.get("min_cosine") is not None else None]
            for s in stages if s.get("cosine") is not None]


def render_markdown(run: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """report.md: summary, stage table relative to the baseline, per-layer table, plot links."""
    lines = [f"# Compression report: {run['model']} on {run['dataset']}", "", summary_line(run), "",
             *[f"- {note}" for note in run.get("notes") or []], *([""] if run.get("notes") else []),
             "## Stages (× = times smaller / faster than the baseline)", "",
             markdown_table(STAGE_HEADERS, [stage_cells(r) for r in stage_rows(run)]), "",
             "## Layers (baseline vs final stage)", "", markdown_table(LAYER_HEADERS, layer_rows(run))
             if layer_rows(run) else "(no weight layers)", ""]
    if quality_rows(run):
        lines += ["## Embedding quality against the baseline", "", markdown_table(QUALITY_HEADERS, quality_rows(run)),
                  ""]
    if run.get("trials"):
        lines += ["## Settings tried", "", markdown_table(TRIAL_HEADERS, trial_rows(run)), ""]
    for key, file in plots.items():
        lines += [f"![{key}]({file})", ""]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None and Paths by strings, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_run_report(run: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, report.md (+ PNGs under plots/) and a self-contained report.html into ``out_dir``.

    Returns ``{"json", "md", "html"}`` paths plus one entry per PNG (``plot:<name>``).
    """
    check_run(run)
    from deepshrink.report.html import render_html
    from deepshrink.report.run_plots import run_figures

    out = ensure_dir(out_dir)
    data = _jsonable(run)
    figures = run_figures(data)  # name -> PNG bytes
    plot_dir = ensure_dir(out / "plots")
    paths: dict[str, Path] = {}
    rel: dict[str, str] = {}
    for key, png in figures.items():
        path = plot_dir / f"{key}.png"
        atomic_write_bytes(path, png)
        paths[f"plot:{key}"] = path
        rel[key] = f"plots/{key}.png"
    paths["json"] = out / "report.json"
    atomic_write_text(paths["json"], json.dumps(data, indent=2, sort_keys=True))
    paths["md"] = out / "report.md"
    atomic_write_text(paths["md"], render_markdown(data, rel))
    paths["html"] = out / "report.html"
    atomic_write_text(paths["html"], render_html(data, figures))
    return paths
