"""Wall-clock latency of a model or any callable, with warm-up, fixed threads and robust statistics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.measure._runtime import batch_size_of, call, eval_mode, first_line, torch_threads


@dataclass(frozen=True)
class LatencyResult:
    """Per-call latency statistics in milliseconds (``std_ms`` is the sample standard deviation)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    threads: int
    batch_size: int | None


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _summarise(times_s: Sequence[float], threads: int, batch_size: int | None) -> LatencyResult:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    return LatencyResult(
        median_ms=float(np.median(ms)),
        p10_ms=float(np.percentile(ms, 10)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        repeats=int(ms.size),
        threads=threads,
        batch_size=batch_size,
    )


def _sync() -> None:
    """Wait for queued CUDA work: kernels launch asynchronously, so a timer stopped without this measures the
    launches, not the work (a no-op on machines where CUDA was never used)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed_call(name: str, fn: Callable[..., Any], example_inputs: Any) -> float:
    """Seconds for one call of ``fn`` (CUDA work finished on both sides of the timer); a failing call becomes
    a one-line ModelError."""
    _sync()
    start = time.perf_counter()
    try:
        call(fn, example_inputs)
        _sync()
    except Exception as exc:  # user code failing is a model problem
        raise ModelError(f"{name} cannot run on the example input: {first_line(exc)}") from None
    return time.perf_counter() - start


def measure_latency(
    fn_or_model: Callable[..., Any],
    example_inputs: Any,
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> LatencyResult:
    """Time ``repeats`` calls after ``warmup`` untimed ones, under inference_mode and eval mode.

    ``threads`` sets torch's thread count for the run only; it is restored afterwards.
    ``example_inputs`` is a tensor, a tuple of args or a dict of kwargs. Where CUDA is in use, each timed
    call waits for the GPU's queued work before and after it (``torch.cuda.synchronize``).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    return compare_latency(
        {"model": fn_or_model}, example_inputs, rounds=repeats, warmup=warmup, threads=threads
    )["model"]


def compare_latency(
    candidates: Mapping[str, Callable[..., Any]],
    example_inputs: Any,
    *,
    rounds: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    block: int = 1,
) -> dict[str, LatencyResult]:
    """Time several candidates interleaved round-robin so they share the same thermal and noise conditions.

    Each round calls every candidate ``block`` times in a row; the starting candidate rotates each
    round so none always runs first (e.g. straight after another one's cache misses). With
    ``block > 1`` one untimed call settles each block: runtimes with their own thread pools
    (ONNX Runtime, OpenMP) keep spinning for a while after a call and would otherwise slow the
    next candidate's first call.
    """
    if not candidates:
        raise ConfigError("compare_latency needs at least one candidate")
    for name, fn in candidates.items():
        if not callable(fn):
            raise ModelError(f"candidate {name!r} is not callable ({type(fn).__name__})")
    _check_count("warmup", warmup, 0)
    _check_count("rounds", rounds, 1)
    _check_count("block", block, 1)
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    batch = batch_size_of(example_inputs)
    with contextlib.ExitStack() as stack:
        used_threads = stack.enter_context(torch_threads(threads))
        stack.enter_context(torch.inference_mode())
        for name in names:
            stack.enter_context(eval_mode(candidates[name]))
        for _ in range(warmup):
            for name in names:
                _timed_call(name, candidates[name], example_inputs)
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if block > 1:
                    _timed_call(name, candidates[name], example_inputs)
                for _ in range(block):
                    times[name].append(_timed_call(name, candidates[name], example_inputs))
    return {name: _summarise(times[name], used_threads, batch) for name in names}
