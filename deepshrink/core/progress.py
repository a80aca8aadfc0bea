"""Progress bars for long work, drawn on stderr by rich; off in tests and when disabled."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(requested: bool | None = None) -> bool:
    """Bars are on unless asked off or DEEPSHRINK_PROGRESS=0 (the test suite sets it); only on a terminal."""
    if requested is not None:
        return requested
    return os.environ.get("DEEPSHRINK_PROGRESS", "1") != "0"


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a transient progress bar on stderr when enabled."""
    if not progress_enabled(enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or CI: no bar, no blank lines
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
