"""The HTML report is self-contained: no network reference, images as data URIs, every plot and stage row."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import torch
from torch import nn

from deepshrink.report.run import record_stage, write_run_report
from deepshrink.report.run_plots import FIGURES


class _Collect(HTMLParser):
    """Every attribute value, every <img> src and the text of each table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str]] = []
        self.images: list[str] = []
        self.figures: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag == "img":
            self.images.append(values.get("src", ""))
        if tag == "figure":
            self.figures.append(values.get("id", ""))
        if tag == "table":
            self._table = values.get("id", "")
            self.rows[self._table] = []
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _run() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(20, 8), torch.randint(0, 2, (20,))
    base = record_stage("baseline", "baseline", model, example_inputs=x[:1], eval_data=(x, y), latency=True)
    with torch.no_grad():
        model[1].weight[:, :4] = 0
    half = record_stage("half <pruned>", "prune", model, example_inputs=x[:1], eval_data=(x, y), latency=True)
    base["artifact_bytes"], half["artifact_bytes"] = 400, 150  # sizes of files the runner would have written
    return {"model": "tiny", "dataset": "random", "recipe": "r & d", "baseline": base, "stages": [half]}


def test_html_is_self_contained_with_all_plots_and_rows(tmp_path) -> None:
    paths = write_run_report(_run(), tmp_path)
    text = paths["html"].read_text(encoding="utf-8")
    page = _Collect()
    page.feed(text)
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    for key, value in page.attrs:
        if key in ("src", "href"):
            assert value.startswith("data:image/png;base64,"), (key, value[:40])
    assert len(page.images) == len(FIGURES)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert page.figures == [f"fig-{k}" for k in FIGURES]
    stages = page.rows["stages"]
    assert stages[0][0] == "stage" and [r[0] for r in stages[1:]] == ["baseline", "half <pruned>"]
    assert stages[2][3] == "+0.00" or stages[2][3].startswith(("+", "-"))
    assert stages[2][5] == "2.667"  # 400 / 150 bytes
    layers = page.rows["layers"]
    assert [r[0] for r in layers[1:]] == ["1", "3"]
    assert layers[1][5] == "50"  # half of layer 1 is zero in the final stage
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert "r &amp; d" in text  # escaped


def test_the_headline_measures_the_last_stored_artifact_not_an_export() -> None:
    from deepshrink.report.run import summary_line

    run = _run()
    export = dict(run["stages"][0], name="export", kind="export", artifact_bytes=390)  # an ONNX file
    line = summary_line({**run, "stages": [*run["stages"], export]})
    assert "Artifact 400 B -> 150 B (2.7x smaller than the baseline file)" in line
    # with the run's fp32 ratio, both figures are given and named
    line = summary_line({**run, "compression_ratio": 2.5})
    assert "(2.7x smaller than the baseline file; compression ratio 2.5x = fp32 parameter bytes / file)" in line
    assert "390" not in line
