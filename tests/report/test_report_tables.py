"""Markdown / rich table output and number formatting, expected strings written by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from deepshrink.core.errors import ConfigError
from deepshrink.report import format_bytes, format_cell, markdown_table, rich_table


def test_markdown_table_auto_alignment_and_numbers() -> None:
    text = markdown_table(["name", "params", "acc"], [["base", 1234567, 0.98765], ["pruned", 89, None]])
    assert text == (
        "| name   |    params |    acc |\n"
        "| :----- | --------: | -----: |\n"
        "| base   | 1,234,567 | 0.9877 |\n"
        "| pruned |        89 |      - |\n"
    )


def test_markdown_table_explicit_align_and_escaping() -> None:
    text = markdown_table(["a", "b", "c"], [["x|y", "mid", 5]], align="lcr")
    assert text == (
        "| a    |  b  |   c |\n"
        "| :--- | :-: | --: |\n"
        "| x\\|y | mid |   5 |\n"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "-"),
        (True, "yes"),
        (0, "0"),
        (np.int64(5000), "5,000"),
        (0.0, "0"),
        (np.float32(0.5), "0.5"),
        (3.14159, "3.142"),
        (12345.678, "12,345.7"),
        (0.00001234, "1.23e-05"),
        (float("nan"), "nan"),
        ("text", "text"),
    ],
)
def test_format_cell(value: object, expected: str) -> None:
    assert format_cell(value) == expected


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**2) == "3.0 MiB"
    with pytest.raises(ConfigError):
        format_bytes(-1)


def test_table_errors() -> None:
    with pytest.raises(ConfigError, match="row 0"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ConfigError, match="align"):
        markdown_table(["a", "b"], [[1, 2]], align="lx")
    with pytest.raises(ConfigError):
        markdown_table([], [])


def test_rich_table() -> None:
    table = rich_table(["name", "params"], [["[bold]base", 1234567]], title="Stages")
    assert isinstance(table, Table)
    assert [c.justify for c in table.columns] == ["left", "right"]
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(table)
    out = buf.getvalue()
    assert "1,234,567" in out
    assert "[bold]base" in out  # cell text is literal, not rich markup
    assert "Stages" in out
