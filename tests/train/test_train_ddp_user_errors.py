"""User mistakes under torchrun (2 gloo processes): one clear error on every rank, never a hang or a
silently different training; and a recipe run under torchrun writes its folder from rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _launch(mode: str, out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", DEEPSHRINK_PROGRESS="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_user_errors_worker.py"), mode, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused(tmp_path):
    for rank in _launch("odd_batch", tmp_path):
        assert rank["error"] and "global batch of 3 does not divide over 2 processes" in rank["error"]


@pytest.mark.slow
def test_ranks_with_different_settings_stop_together_with_one_error(tmp_path):
    for rank in _launch("mismatch", tmp_path):
        assert rank["error"] and "different settings" in rank["error"]


@pytest.mark.slow
def test_a_recipe_under_torchrun_writes_its_folder_from_rank_0_only(tmp_path):
    r0, r1 = _launch("compress", tmp_path)
    assert r0["error"] is None and r1["error"] is None
    run = str(tmp_path / "run")
    assert any(w.startswith(run) and w.endswith("report.json") for w in r0["writes"])
    assert not [w for w in r1["writes"] if w.startswith(run)], r1["writes"]
    assert json.loads((tmp_path / "run" / "state.json").read_text())["complete"] is True
