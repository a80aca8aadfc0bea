"""PNG figures of a run report (stage trade-offs, per-layer bars, weight histograms), as bytes in memory.

Every figure is always drawn (a panel says "not measured" when its data is missing) so a report
has the same set of plots whatever the run measured. Uses the off-screen Agg backend.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never open a window; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Figure keys in the order reports show them, with their captions.
FIGURES: dict[str, str] = {
    "accuracy_vs_size": "Accuracy versus artifact size over all stages",
    "accuracy_vs_latency": "Accuracy versus latency over all stages",
    "layer_sparsity": "Per-layer weight sparsity, baseline and every stage",
    "layer_bits": "Per-layer bits per stored weight, baseline and every stage",
    "weight_histograms": "Non-zero weights per layer before (baseline) and after (final stage)",
}
# Drawn only for runs that tried several settings (``deepshrink auto``): their "trials" list.
TRIAL_FIGURES: dict[str, str] = {"pareto": "Every setting tried: validation accuracy versus bytes, Pareto front"}


@contextlib.contextmanager
def _figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float]) -> Iterator[tuple[Figure, Any]]:
    fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _missing(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _stages(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [run["baseline"], *run["stages"]]


def plot_tradeoff(stages: Sequence[Mapping[str, Any]], x_key: str, x_label: str, title: str,
                  *, log_x: bool) -> bytes:
    """Accuracy (%) against ``x_key`` for each stage with both measured, joined in stage order."""
    pts = [(s["name"], s[x_key], 100.0 * s["accuracy"], i == 0) for i, s in enumerate(stages)
           if s.get(x_key) is not None and s.get("accuracy") is not None and s[x_key] > 0]
    with _figure(figsize=(6.0, 4.0)) as (fig, axes):
        ax = axes[0, 0]
        if not pts:
            _missing(ax, f"accuracy or {x_label}")
        else:
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            ax.plot(xs, ys, "-", color="tab:gray", alpha=0.5)
            for is_base, color, label in ((True, "tab:blue", "baseline"), (False, "tab:red", "stages")):
                chosen = [p for p in pts if p[3] == is_base]  # the baseline only when it has both measures
                if chosen:
                    ax.scatter([p[1] for p in chosen], [p[2] for p in chosen], color=color, zorder=3, label=label)
            for name, x, y, _ in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel("accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax.set_title(title)
        return _png(fig)


def plot_layer_bars(stages: Sequence[Mapping[str, Any]], key: str, y_label: str, title: str,
                    *, scale: float = 1.0) -> bytes:
    """Grouped bars: one group per layer, one bar per stage, height ``layer[key] * scale``."""
    names: list[str] = []
    for s in stages:
        for layer in s.get("layers", []):
            if layer["name"] not in names:
                names.append(layer["name"])
    with _figure(figsize=(max(6.0, 0.9 * len(names) * max(1, len(stages)) ** 0.5 + 2), 4.0)) as (fig, axes):
        ax = axes[0, 0]
        if not names:
            _missing(ax, "per-layer data")
        else:
            width = 0.8 / len(stages)
            x = np.arange(len(names))
            for i, s in enumerate(stages):
                by_name = {layer["name"]: layer for layer in s.get("layers", [])}
                heights = [scale * by_name[n][key] if n in by_name and by_name[n].get(key) is not None
                           else 0.0 for n in names]
                ax.bar(x + (i - (len(stages) - 1) / 2) * width, heights, width, label=s["name"])
            ax.set_xticks(x, names, rotation=20, ha="right")
            ax.set_ylabel(y_label)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7, ncol=min(4, len(stages)))
        ax.set_title(title)
        return _png(fig)


def _draw_hist(ax: Any, hist: Mapping[str, Any] | None, color: str, label: str, *, spikes: bool) -> None:
    if not hist or hist.get("kind") in (None, "empty"):
        return
    if hist["kind"] == "spikes":
        values, counts = hist["values"], hist["counts"]
        ax.vlines(values, 0.8, counts, colors=color, linewidth=1.2,
                  label=f"{label} ({hist['nonzeros']:,} nz, {len(values)} values)")
        if spikes:
            ax.plot(values, counts, "o", color=color, markersize=2)
    else:
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
        ax.stairs(counts, edges, fill=label == "before", alpha=0.5 if label == "before" else 1.0, color=color,
                  label=f"{label} ({hist['nonzeros']:,} nz)")


def plot_weight_histograms(before: Mapping[str, Any], after: Mapping[str, Any], title: str) -> bytes:
    """One panel per layer: baseline non-zeros (filled) and final non-zeros (spikes or outline), log y."""
    names = list(dict.fromkeys([*before, *after]))
    cols = max(1, min(3, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    with _figure(rows, cols, figsize=(4.5 * cols, 3.0 * rows)) as (fig, axes):
        if not names:
            _missing(axes[0, 0], "weight histograms")
        for ax in axes.ravel()[len(names):]:
            ax.set_visible(False)
        for ax, name in zip(axes.ravel(), names):
            ax.set_title(name, fontsize=9)
            b, a = before.get(name), after.get(name)
            if not any(h and h.get("nonzeros") for h in (b, a)):
                _missing(ax, "non-zero weights")
                continue
            _draw_hist(ax, b, "tab:blue", "before", spikes=False)
            _draw_hist(ax, a, "tab:red", "after", spikes=True)
            ax.set_yscale("log")
            ax.set_xlabel("weight value")
            ax.set_ylabel("count")
            ax.legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        return _png(fig)


def plot_pareto(trials: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Tried settings as (bytes, validation accuracy): accepted, rejected, and the front joined by a line."""
    with _figure(figsize=(6.5, 4.2)) as (fig, axes):
        ax = axes[0, 0]
        pts = [t for t in trials if t.get("bytes") and t.get("val_accuracy") is not None]
        if not pts:
            _missing(ax, "trials")
        for accepted, color, label in ((True, "tab:green", "within budget"), (False, "tab:red", "over budget")):
            sel = [t for t in pts if bool(t.get("accepted")) == accepted]
            ax.scatter([t["bytes"] for t in sel], [100 * t["val_accuracy"] for t in sel], color=color,
                       label=label, zorder=3, marker="o")
        front = sorted((t for t in pts if t.get("pareto")), key=lambda t: t["bytes"])
        if front:
            ax.plot([t["bytes"] for t in front], [100 * t["val_accuracy"] for t in front], "-", color="black",
                    alpha=0.6, label="Pareto front")
        for t in pts:
            ax.annotate(f"{t.get('phase', '')[:1]}{t.get('n', '')}", (t["bytes"], 100 * t["val_accuracy"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=7)
        if pts:
            ax.set_xscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("bytes (p = pruning preview, b = final artifact)")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
        return _png(fig)


def run_figures(run: Mapping[str, Any]) -> dict[str, bytes]:
    """Every figure of :data:`FIGURES` (and :data:`TRIAL_FIGURES` if the run has trials) as PNG bytes."""
    stages = _stages(run)
    final = run["stages"][-1] if run["stages"] else run["baseline"]
    label = f"{run['model']} on {run['dataset']}"
    extra = {"pareto": plot_pareto(run["trials"], f"{label}: settings tried")} if run.get("trials") else {}
    return {**extra,
        "accuracy_vs_size": plot_tradeoff(stages, "artifact_bytes", "artifact size (bytes)",
                                          f"{label}: accuracy vs size", log_x=True),
        "accuracy_vs_latency": plot_tradeoff(stages, "latency_ms", "latency (ms, median)",
                                             f"{label}: accuracy vs latency", log_x=False),
        "layer_sparsity": plot_layer_bars(stages, "sparsity", "weight sparsity (%)",
                                          f"{label}: per-layer sparsity", scale=100.0),
        "layer_bits": plot_layer_bars(stages, "bits", "bits per weight", f"{label}: per-layer bits"),
        "weight_histograms": plot_weight_histograms(run["baseline"].get("histograms", {}),
                                                    final.get("histograms", {}),
                                                    f"{label}: weights before vs after ({final['name']})"),
    }
