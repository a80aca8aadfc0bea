"""``--threads`` of `deepshrink run` and `deepshrink demo`: torch's thread count is set before any work.

The count changes float sums in training, so the recorded seed-0 artifact bytes of the Deep Compression
benchmark (measured at 1 thread) reproduce from the CLI only at ``--threads 1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import deepshrink.demo
import deepshrink.recipe.runner
from deepshrink.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "deep_compression_lenet300.yaml"


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _report() -> dict[str, Any]:
    return {"baseline": {"accuracy": 0.5}, "stages": [], "recipe": "x", "model": "m", "dataset": "d"}


@pytest.fixture
def seen_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread count at the moment the command starts its work (run_recipe / run_demo), per call."""
    seen: list[int] = []

    def fake_run_recipe(*_args: Any, **_kwargs: Any) -> SimpleNamespace:
        seen.append(torch.get_num_threads())
        return SimpleNamespace(report=_report())

    def fake_run_demo(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        seen.append(torch.get_num_threads())
        return {"models": {}}

    monkeypatch.setattr(deepshrink.recipe.runner, "run_recipe", fake_run_recipe)
    monkeypatch.setattr(deepshrink.demo, "run_demo", fake_run_demo)
    return seen


@pytest.mark.parametrize("command", ["run", "demo"])
def test_threads_is_set_before_the_work(command: str, seen_threads: list[int], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(2)
    argv = ["run", str(RECIPE)] if command == "run" else ["demo"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out) is not None
    assert seen_threads == [1]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["run", "demo"])
def test_threads_zero_keeps_torch_default(command: str, seen_threads: list[int], tmp_path: Path) -> None:
    torch.set_num_threads(2)
    argv = ["run", str(RECIPE)] if command == "run" else ["demo"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json"]) == 0
    assert seen_threads == [2]


@pytest.mark.parametrize("value,fragment", [("-1", "must be in 0..4096"), ("99999", "must be in 0..4096"), ("two", "not an integer")])
@pytest.mark.parametrize("command", ["run", "demo"])
def test_bad_threads_is_a_usage_error(command: str, value: str, fragment: str, seen_threads: list[int],
                                      capsys: pytest.CaptureFixture) -> None:
    argv = ["run", str(RECIPE)] if command == "run" else ["demo"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--threads", value])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert seen_threads == []
