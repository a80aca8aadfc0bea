"""Sensitivity curves as one PNG: score versus kept fraction, versus bits and (if scanned) versus rank."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from deepshrink.sensitivity.scan import SensitivityResult  # noqa: E402


def plot_sensitivity(result: SensitivityResult, title: str) -> bytes:
    """PNG bytes: one line per layer in each panel, the unmodified score as a dashed line."""
    curves = list(result.layers.values())
    with_ranks = [c for c in curves if c.ranks]
    panels = 3 if with_ranks else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 3.8), squeeze=False)
    try:
        ax_k, ax_b = axes[0, 0], axes[0, 1]
        for c in curves:
            ax_k.plot(c.keeps, [100 * s for s in c.keep_scores], "o-", markersize=3, label=c.name)
            ax_b.plot(c.bits, [100 * s for s in c.bit_scores], "o-", markersize=3, label=c.name)
        ax_k.set_xscale("log")
        ax_k.invert_xaxis()
        ax_k.set_xlabel("kept fraction (log; more pruning to the right)")
        ax_b.invert_xaxis()
        ax_b.set_xlabel("weight bits (k-means codebook)")
        if with_ranks:
            ax_r = axes[0, 2]
            for c in with_ranks:
                ax_r.plot(c.ranks, [100 * s for s in c.rank_scores], "o-", markersize=3, label=c.name)
            ax_r.invert_xaxis()
            ax_r.set_xlabel("rank (SVD)")
        for ax in axes.ravel():
            ax.axhline(100 * result.baseline, color="gray", linestyle="--", linewidth=1)
            ax.set_ylabel(f"{result.metric} (%)")
            ax.grid(True, alpha=0.3)
            if curves:
                ax.legend(fontsize=7)
        fig.suptitle(f"{title}: one layer compressed at a time, no retraining")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)
