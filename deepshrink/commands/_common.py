"""Shared by the command modules: exit codes and the console."""

from __future__ import annotations

import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def console():
    """A rich console; wide enough for per-layer tables when stdout is a pipe or a file."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)
