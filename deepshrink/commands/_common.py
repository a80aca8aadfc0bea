"""Shared by the command modules: exit codes, the console and the ``--threads`` option."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def console():
    """A rich console; wide enough for per-layer tables when stdout is a pipe or a file."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def threads_arg(text: str) -> int:
    """argparse type of ``--threads``: an integer >= 0 (0 = torch's default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_THREADS} (0 = torch's default), got {value}")
    return value


MAX_THREADS = 4096
MAX_SEED = 2**32 - 1  # numpy's seed range (every run seeds Python, NumPy and torch)


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer in 0..2^32-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {value}")
    return value


def add_threads_option(parser: Any) -> None:
    """``--threads N``: CPU threads of torch's kernels. Float sums depend on the count, so seed-exact results
    (the artifact bytes in benchmarks/RESULTS.md, measured at 1 thread) reproduce only at the same count."""
    parser.add_argument("--threads", type=threads_arg, default=0,
                        help="CPU threads for torch (default 0: torch's default, one per core); trained "
                             "weights depend on it bit for bit (the recorded benchmark bytes: --threads 1)")


def apply_threads(threads: int) -> None:
    """Set torch's intra-op thread count before any work (0 leaves torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
