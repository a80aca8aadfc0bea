"""One self-contained HTML page per run: inline CSS, tables, PNG plots embedded as base64 data URIs.

Nothing is fetched when the page opens (no scripts, fonts, stylesheets or images from the network),
so it renders the same offline, attached to an e-mail or archived next to the artifact.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from deepshrink.report.run_plots import FIGURES, TRIAL_FIGURES
from deepshrink.report.tables import format_cell

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{background:#f7fbff}
.good{color:#17702b}.bad{color:#b3261e}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
.meta{color:#555;font-size:.9em}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, row_classes: Sequence[str] = (),
               table_id: str | None = None) -> str:
    """An escaped HTML table; numbers are formatted like the markdown tables and right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_esc(row_classes[i])}"' if i < len(row_classes) and row_classes[i] else ""
        cells = "".join(f'<td class="num">{_esc(format_cell(c))}</td>' if _is_num(c)
                        else f"<td>{_esc(format_cell(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(key: str, png: bytes) -> str:
    caption = {**FIGURES, **TRIAL_FIGURES}.get(key, key)
    return (f'<figure id="fig-{_esc(key)}"><img alt="{_esc(caption)}" src="{data_uri(png)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _meta_rows(run: Mapping[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = [["model", run["model"]], ["dataset", run["dataset"]], ["recipe", run["recipe"]]]
    for key in sorted(k for k in run if k not in ("model", "dataset", "recipe", "baseline", "stages")):
        value = run[key]
        if isinstance(value, (str, int, float, bool)) or value is None:
            rows.append([key, value])
    return rows


def render_html(run: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The report page for ``run`` (as checked by ``deepshrink.report.run.check_run``) and its PNG figures."""
    from deepshrink.report.run import (
        LAYER_HEADERS,
        STAGE_HEADERS,
        TRIAL_HEADERS,
        layer_rows,
        stage_cells,
        QUALITY_HEADERS,
        quality_rows,
        stage_rows,
        summary_line,
        trial_rows,
    )

    rows = stage_rows(run)
    stage_table = html_table(STAGE_HEADERS, [stage_cells(r) for r in rows],
                             row_classes=["baseline"] + [""] * (len(rows) - 1), table_id="stages")
    layers = layer_rows(run)
    layer_table = (html_table(LAYER_HEADERS, layers, table_id="layers") if layers
                   else "<p>(no weight layers)</p>")
    title = f"Compression report: {run['model']} on {run['dataset']}"
    plots = "".join(_figure(key, figures[key]) for key in [*FIGURES, *(k for k in figures if k not in FIGURES)]
                    if key in figures)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p>{_esc(summary_line(run))}</p>",
        *[f"<p class=\"meta\">{_esc(note)}</p>" for note in run.get("notes") or []],
        html_table(["setting", "value"], _meta_rows(run), table_id="meta"),
        "<h2>Stages</h2>",
        "<p class=\"meta\">× columns: times smaller (or faster) than the baseline; Δ pt: accuracy change "
        "in percentage points. Artifact bytes are sizes of real files.</p>",
        stage_table,
        *(["<h2>Embedding quality against the baseline</h2>",
           html_table(QUALITY_HEADERS, quality_rows(run), table_id="quality")] if quality_rows(run) else []),
        "<h2>Layers (baseline vs final stage)</h2>",
        layer_table,
        *(["<h2>Settings tried</h2>", html_table(TRIAL_HEADERS, trial_rows(run), table_id="trials")]
          if run.get("trials") else []),
        "<h2>Plots</h2>",
        plots,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
