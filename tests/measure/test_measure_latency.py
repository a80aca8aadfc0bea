"""Latency statistics sanity, thread handling and round-robin interleaving (no timing thresholds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.measure import compare_latency, measure_latency


def test_result_fields_sane_and_threads_restored() -> None:
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    result = measure_latency(nn.Linear(8, 4), torch.randn(6, 8), warmup=1, repeats=9, threads=wanted)
    assert torch.get_num_threads() == before
    assert result.threads == wanted
    assert result.repeats == 9
    assert result.batch_size == 6
    assert result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0
    assert result.std_ms >= 0


def test_threads_none_reports_current_count() -> None:
    result = measure_latency(lambda x: x + 1, torch.zeros(3), warmup=0, repeats=2)
    assert result.threads == torch.get_num_threads()


def test_call_count_inference_mode_and_eval() -> None:
    calls: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append((torch.is_inference_mode_enabled(), self.training))
            return x

    model = Probe().train()
    measure_latency(model, torch.zeros(2), warmup=2, repeats=5)
    assert len(calls) == 7
    assert all(call == (True, False) for call in calls)
    assert model.training is True


def test_plain_callable_with_kwargs_and_no_batch() -> None:
    got: list[int] = []
    result = measure_latency(lambda *, n: got.append(n), {"n": 3}, warmup=0, repeats=3)
    assert got == [3, 3, 3]
    assert result.batch_size is None


def test_compare_latency_interleaves_round_robin() -> None:
    log: list[str] = []
    candidates = {"a": lambda x: log.append("a"), "b": lambda x: log.append("b")}
    results = compare_latency(candidates, torch.zeros(1), rounds=4, warmup=1)
    assert set(results) == {"a", "b"}
    assert results["a"].repeats == 4 and results["b"].repeats == 4
    # warm-up round, then rounds with a rotating starter
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError):
        measure_latency(lambda x: x, torch.zeros(1), repeats=0)
    with pytest.raises(ConfigError):
        measure_latency(lambda x: x, torch.zeros(1), threads=0)
    with pytest.raises(ConfigError):
        compare_latency({}, torch.zeros(1))


def test_failing_callable_is_model_error_and_threads_restored() -> None:
    before = torch.get_num_threads()

    def boom(x: torch.Tensor) -> None:
        raise RuntimeError("kaput\nsecond line")

    with pytest.raises(ModelError, match="kaput") as info:
        measure_latency(boom, torch.zeros(1), threads=1)
    assert "\n" not in str(info.value)
    assert torch.get_num_threads() == before


def test_compare_latency_blocks_time_consecutive_calls_after_one_settling_call() -> None:
    calls: list[str] = []

    def make(name: str):
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return x

        return fn

    res = compare_latency({"a": make("a"), "b": make("b")}, torch.zeros(2), rounds=2, warmup=0, block=3)
    assert res["a"].repeats == 6 and res["b"].repeats == 6
    # each round: 1 settling + 3 timed calls per candidate, candidates never interleaved inside a block
    assert calls == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4


def test_compare_latency_rejects_a_zero_block() -> None:
    with pytest.raises(ConfigError, match="block"):
        compare_latency({"a": lambda x: x}, torch.zeros(2), rounds=1, block=0)


def test_cuda_work_is_waited_for_on_both_sides_of_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA launches are asynchronous: without a synchronize after the call the timer stops before the work is
    # done. Simulated here (CI has no GPU): the order of calls and synchronizes is what is checked.
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    measure_latency(lambda x: events.append("call"), torch.ones(1), warmup=1, repeats=2)
    assert events == ["sync", "call", "sync"] * 3
    events.clear()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA never used: no synchronize
    measure_latency(lambda x: events.append("call"), torch.ones(1), warmup=0, repeats=2)
    assert events == ["call", "call"]
