"""Shared by the command modules: exit codes, the console and the ``--threads`` option."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def console():
    """A rich console; wide enough for per-layer tables when stdout is a pipe or a file."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


MAX_THREADS = 4096
MAX_SEED = 2**32 - 1  # numpy's seed range (every run seeds Python, NumPy and torch)


def _int_in(text: str, high: int, note: str = "") -> int:
    """An integer in ``0..high`` for argparse (usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= high:
        raise argparse.ArgumentTypeError(f"must be in 0..{high}{note}, got {value}")
    return value


def threads_arg(text: str) -> int:
    """argparse type of ``--threads``: an integer in 0..4096 (0 = torch's default)."""
    return _int_in(text, MAX_THREADS, " (0 = torch's default)")


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer in 0..2^32-1."""
    return _int_in(text, MAX_SEED)


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


def model_args_type(text: str) -> str:
    """argparse type of --model-args: a JSON object (kept as its text)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"hidden\": [200, 50]}'")
    return text


def check_val_fraction(value: float) -> None:
    """ConfigError unless ``--val-fraction`` is in (0, 1) (checked before any data is loaded or trained)."""
    from deepshrink.core.errors import ConfigError

    if not 0 < value < 1:
        raise ConfigError(f"--val-fraction: the validation fraction must be in (0, 1), got {value}")
