"""Markdown and rich tables with consistent number formatting (ints with separators, floats to 4 digits)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from deepshrink.core.errors import ConfigError

_JUSTIFY = {"l": "left", "r": "right", "c": "center"}


def format_bytes(n: int) -> str:
    """Human-readable binary size: ``512 B``, ``1.5 KiB``, ``2.0 MiB``."""
    if n < 0:
        raise ConfigError(f"byte count must be >= 0, got {n}")
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def format_cell(value: object) -> str:
    """One cell as text: None -> ``-``, bool -> yes/no, ints ``1,234``, floats 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x == 0.0:
            return "0"
        if abs(x) >= 1000.0:
            return f"{x:,.1f}"
        if abs(x) >= 1e-3:
            return f"{x:.4g}"
        return f"{x:.2e}"
    return str(value)


def _prepare(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None
) -> tuple[list[str], list[list[str]], str]:
    """Validate shapes, format every cell and resolve the per-column alignment letters."""
    if not headers:
        raise ConfigError("a table needs at least one header")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ConfigError(f"row {i} has {len(row)} cells but there are {len(headers)} headers")
    if align is None:
        align = "".join(
            "r" if any(r[c] is not None for r in rows) and all(r[c] is None or _is_number(r[c]) for r in rows)
            else "l"
            for c in range(len(headers))
        )
    elif len(align) != len(headers) or any(ch not in _JUSTIFY for ch in align):
        raise ConfigError(f"align must be one of l/r/c per column ({len(headers)} letters), got {align!r}")
    text_rows = [[format_cell(v) for v in row] for row in rows]
    return [str(h) for h in headers], text_rows, align


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def _pad(text: str, width: int, how: str) -> str:
    if how == "r":
        return text.rjust(width)
    if how == "c":
        return text.center(width)
    return text.ljust(width)


def markdown_table(headers: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """GitHub-flavoured markdown table, columns padded to equal width, ending with a newline.

    ``align`` has one letter per column (``l``, ``r``, ``c``); by default numeric columns are
    right-aligned and the rest left-aligned.
    """
    head, body, align = _prepare(headers, rows, align)
    head = [_escape(h) for h in head]
    body = [[_escape(c) for c in row] for row in body]
    widths = [max(3, len(head[c]), *(len(r[c]) for r in body)) for c in range(len(head))]
    rule = []
    for width, how in zip(widths, align):
        if how == "r":
            rule.append("-" * (width - 1) + ":")
        elif how == "c":
            rule.append(":" + "-" * (width - 2) + ":")
        else:
            rule.append(":" + "-" * (width - 1))
    lines = ["| " + " | ".join(_pad(h, w, a) for h, w, a in zip(head, widths, align)) + " |"]
    lines.append("| " + " | ".join(rule) + " |")
    for row in body:
        lines.append("| " + " | ".join(_pad(c, w, a) for c, w, a in zip(row, widths, align)) + " |")
    return "\n".join(lines) + "\n"


def rich_table(
    headers: list[str], rows: list[list[object]], align: str | None = None, title: str | None = None
) -> Table:
    """The same table as a ``rich.table.Table`` for terminal output; the caller prints it."""
    head, body, align = _prepare(headers, rows, align)
    table = Table(title=title)
    for header, how in zip(head, align):
        table.add_column(Text(header), justify=_JUSTIFY[how])  # type: ignore[arg-type]
    for row in body:
        table.add_row(*(Text(cell) for cell in row))  # Text: no markup parsing
    return table
