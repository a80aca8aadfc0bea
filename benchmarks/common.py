"""Shared helpers for benchmarks: machine description, result files, mean/std."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", load average %.1f at write time" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}{load}")


def git_rev() -> str:
    """The commit, marked when tracked files outside the results differ from it (the code run is not that commit's)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT, check=False).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":!benchmarks/results", ":!benchmarks/RESULTS.md"], capture_output=True,
                                 text=True, cwd=ROOT.parent, check=False).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev} + uncommitted changes" if changed and rev != "unknown" else rev


def command() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])  # quoted: copy-paste runs it again


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_result(name: str, markdown: str) -> Path:
    from deepshrink.core.fileio import atomic_write_text

    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    atomic_write_text(path, markdown)
    return path
