"""The trainer under torchrun: 2 gloo processes on loopback launched by the test itself."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepshrink.core.errors import ConfigError
from deepshrink.measure import evaluate
from deepshrink.train import Trainer, distributed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402


# every assertion below holds for both ways of averaging gradients: shared memory (auto, on x86-64) and gloo
@pytest.fixture(scope="module", params=["auto", "gloo"])
def two_ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["DEEPSHRINK_DDP_COMM"] = request.param
    env["DEEPSHRINK_PROGRESS"] = "0"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    shm_expected = request.param == "auto" and platform.machine().lower() in ("x86_64", "amd64")
    for r in ranks:  # the path under test is the one that ran
        assert (r["shm_calls"] > 0) == shm_expected, (request.param, r["shm_calls"])
    return ranks[0], ranks[1], out


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for v in state.values()])


@pytest.mark.slow
def test_both_ranks_end_with_identical_weights(two_ranks):
    r0, r1, _ = two_ranks
    for key in ("full", "mini", "student"):
        assert torch.equal(_flat(r0[key]), _flat(r1[key])), key
    assert torch.equal(r0["full_history"], r1["full_history"])  # the reported loss is reduced over ranks


@pytest.mark.slow
def test_gradients_are_averaged_like_one_full_batch(two_ranks):
    # one global batch of 64 split 32/32 over two ranks: averaged gradients == one process on all 64
    r0, _, _ = two_ranks
    single = ddp_worker.model(seed=0)
    res = Trainer(single, ddp_worker.FULL_BATCH, progress=False, device="cpu").fit(ddp_worker.blobs(64))
    assert torch.allclose(_flat(single.state_dict()), _flat(r0["full"]), atol=1e-5)
    assert torch.allclose(torch.tensor(res.history, dtype=torch.float64), r0["full_history"], atol=1e-5)
    untrained = _flat(ddp_worker.model(seed=0).state_dict())
    assert not torch.allclose(untrained, _flat(r0["full"]), atol=1e-3)  # training did move the weights


@pytest.mark.slow
def test_only_rank_zero_writes_and_its_checkpoint_holds_the_result(two_ranks):
    r0, r1, out = two_ranks
    assert r1["writes"] == []
    assert len([w for w in r0["writes"] if w.endswith("full.pt")]) == ddp_worker.FULL_BATCH.epochs
    assert any(w.endswith("distill.pt") for w in r0["writes"])
    ckpt = torch.load(out / "full.pt", weights_only=True)
    assert torch.equal(_flat(ckpt["model"]), _flat(r0["full"]))
    assert ckpt["torch_rng_ranks"].shape[0] == 2
    student = torch.load(out / "distill.pt", weights_only=True)["model"]
    assert any(k.startswith("adapters.") for k in student)  # widths 8 vs 16: a learned adapter was saved


@pytest.mark.slow
def test_two_processes_match_one_process_accuracy(two_ranks):
    r0, _, _ = two_ranks
    data = ddp_worker.blobs(256, seed=1)
    two = ddp_worker.model(seed=10)
    two.load_state_dict(r0["mini"])
    one = ddp_worker.model(seed=10)
    res = Trainer(one, ddp_worker.MINI_BATCH, progress=False, device="cpu").fit(data)
    acc_two, acc_one = evaluate(two, data).accuracy, evaluate(one, data).accuracy
    assert acc_one > 0.85 and abs(acc_two - acc_one) <= 0.05
    assert r0["mini_steps"] == res.steps  # batch_size is the global batch: same number of steps


@pytest.mark.slow
def test_a_loss_that_diverges_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    r0, r1, _ = two_ranks
    assert r0["diverged"].startswith("4: ") and r1["diverged"].startswith("4: ")
    assert "step 3" in r0["diverged"] and "diverged" in r0["diverged"]
    assert "another rank" in r0["diverged"] and "loss nan on this rank" in r1["diverged"]


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup(torch.device("cpu")) is None
    assert distributed.is_main_process()


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "5"},
                                 {"WORLD_SIZE": "x"}, {"WORLD_SIZE": "2", "RANK": "0"}])
def test_bad_launch_environment_is_a_clear_error(monkeypatch, env):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="WORLD_SIZE|RANK|MASTER"):
        distributed.setup(torch.device("cpu"))
