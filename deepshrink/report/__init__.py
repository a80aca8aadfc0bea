"""Reports: markdown/rich tables and PNG plots (plots load matplotlib lazily, on first use)."""

from __future__ import annotations

from typing import Any

from deepshrink.report.tables import format_bytes, format_cell, markdown_table, rich_table

_PLOTS = ("plot_accuracy_vs_size", "plot_stage_sizes", "plot_weight_histograms")

__all__ = ["format_bytes", "format_cell", "markdown_table", "rich_table", *_PLOTS]


def __getattr__(name: str) -> Any:
    """Import ``deepshrink.report.plots`` only when a plot function is first asked for."""
    if name in _PLOTS:
        from deepshrink.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'deepshrink.report' has no attribute {name!r}")
