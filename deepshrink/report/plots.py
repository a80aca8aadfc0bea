"""PNG figures for compression reports, rendered off-screen with Agg and written atomically."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never open a window; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from deepshrink.core.errors import ConfigError  # noqa: E402
from deepshrink.core.fileio import atomic_write_bytes  # noqa: E402
from deepshrink.report.tables import format_bytes  # noqa: E402

# Above this many distinct values the "after" weights are not a shared codebook; draw a histogram.
_MAX_SPIKES = 256


@contextlib.contextmanager
def _figure(
    rows: int = 1, cols: int = 1, *, figsize: tuple[float, float]
) -> Iterator[tuple[Figure, Any]]:
    """A pyplot figure with a 2-D array of axes that is closed however drawing ends."""
    fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render the PNG to memory, then write it atomically (a crash never leaves half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _nonzero(values: np.ndarray) -> np.ndarray:
    """Finite non-zero entries, flattened: pruned zeros would dwarf every other bin."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return flat[(flat != 0) & np.isfinite(flat)]


def plot_weight_histograms(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """One subplot per layer: non-zero weights before (histogram, log y), after as spikes at shared values.

    Zeros are left out so pruning does not flatten the picture; if "after" has more than
    256 distinct values it is drawn as a step histogram instead of spikes.
    """
    if not before:
        raise ConfigError("plot_weight_histograms needs at least one layer")
    if set(before) != set(after):
        missing = sorted(set(before) ^ set(after))
        raise ConfigError(f"before and after must name the same layers; differing: {', '.join(missing)}")
    names = list(before)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    with _figure(rows, cols, figsize=(4.5 * cols, 3.2 * rows)) as (fig, axes):
        _draw_histograms(axes, names, before, after)
        fig.suptitle(title)
        return _save(fig, path)


def _draw_histograms(
    axes: Any, names: list[str], before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]
) -> None:
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names):
        old, new = _nonzero(before[name]), _nonzero(after[name])
        ax.set_title(name, fontsize=9)
        if old.size == 0 and new.size == 0:
            ax.text(0.5, 0.5, "all weights zero", ha="center", va="center", transform=ax.transAxes)
            continue
        if old.size:
            ax.hist(old, bins=100, color="tab:blue", alpha=0.6, label=f"before ({old.size:,} nz)")
        if new.size:
            values, counts = np.unique(new, return_counts=True)
            label = f"after ({new.size:,} nz, {values.size} values)"
            if values.size <= _MAX_SPIKES:
                ax.vlines(values, 0.8, counts, colors="tab:red", linewidth=1.5, label=label)
                ax.plot(values, counts, "o", color="tab:red", markersize=3)
            else:
                ax.hist(new, bins=100, histtype="step", color="tab:red", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.legend(fontsize=7)


def plot_stage_sizes(
    stages: Sequence[tuple[str, int]], path: str | os.PathLike[str], title: str
) -> Path:
    """Bar chart of bytes per pipeline stage on a log axis, each bar labelled with its size."""
    if not stages:
        raise ConfigError("plot_stage_sizes needs at least one stage")
    for name, size in stages:
        if size <= 0:
            raise ConfigError(f"stage {name!r} has size {size}; sizes must be > 0 for a log scale")
    names = [name for name, _ in stages]
    sizes = [size for _, size in stages]
    with _figure(figsize=(max(5.0, 1.3 * len(stages)), 4.0)) as (fig, axes):
        ax = axes[0, 0]
        bars = ax.bar(range(len(stages)), sizes, color="tab:blue")
        ax.set_xticks(range(len(stages)), names, rotation=20, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("bytes")
        for bar, size in zip(bars, sizes):
            center = bar.get_x() + bar.get_width() / 2
            ax.annotate(format_bytes(size), (center, size), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        return _save(fig, path)


def plot_accuracy_vs_size(
    points: Sequence[tuple[str, float, int]],
    path: str | os.PathLike[str],
    title: str = "Accuracy vs size",
) -> Path:
    """Scatter of (name, accuracy 0..1, bytes) points, size on a log x axis, each point labelled."""
    if not points:
        raise ConfigError("plot_accuracy_vs_size needs at least one point")
    for name, _, size in points:
        if size <= 0:
            raise ConfigError(f"point {name!r} has size {size}; sizes must be > 0 for a log scale")
    xs = [size for _, _, size in points]
    ys = [100.0 * acc for _, acc, _ in points]
    with _figure(figsize=(6.0, 4.0)) as (fig, axes):
        ax = axes[0, 0]
        ax.scatter(xs, ys, color="tab:blue")
        for (name, _, _), x, y in zip(points, xs, ys):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
        return _save(fig, path)
