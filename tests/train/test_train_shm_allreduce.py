"""The shared-memory gradient averaging used under DDP on one host (two-rank runs: test_train_distributed)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from deepshrink.core.errors import ConfigError, DeepShrinkError
from deepshrink.train import shm_allreduce


@pytest.fixture
def one_rank_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_average_is_identity_and_leaves_no_file(one_rank_group):
    before = set(shm_allreduce._shm_dir().glob("deepshrink-ddp-*"))
    state = shm_allreduce.SharedMemoryAllReduce(numel=10)
    assert set(shm_allreduce._shm_dir().glob("deepshrink-ddp-*")) == before  # names removed once mapped
    g = torch.arange(6, dtype=torch.float32)
    assert torch.equal(state.average(g.clone()), g)
    assert state.calls == 1


def test_average_sums_every_slot_and_divides(one_rank_group):
    state = shm_allreduce.SharedMemoryAllReduce(numel=8)
    # pretend to be rank 0 of 2 whose peer already published call 1 (parity 1) with known values
    state.world = 2
    state.slots = torch.zeros(2, 2, 8)
    state.flags = torch.tensor([0, 1], dtype=torch.int64)
    state.slots[1, 1, :4] = torch.tensor([1.0, 3.0, 5.0, 7.0]) / 2  # ranks publish grad / world
    out = state.average(torch.tensor([3.0, 1.0, -1.0, 1.0]))
    assert torch.equal(out, torch.tensor([2.0, 2.0, 2.0, 4.0]))
    assert torch.equal(state.slots[1, 0, :4], torch.tensor([1.5, 0.5, -0.5, 0.5]))
    assert state.flags.tolist() == [1, 1]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_mean_is_the_sum_of_gradients_scaled_by_one_over_world(one_rank_group, world):
    state = shm_allreduce.SharedMemoryAllReduce(numel=1000)
    state.world = world
    state.slots = torch.zeros(2, world, 1000)
    state.flags = torch.tensor([0] + [1] * (world - 1), dtype=torch.int64)
    grads = torch.randn(world, 1000, generator=torch.Generator().manual_seed(world)) * 1e3
    state.slots[1, 1:] = grads[1:] * (1.0 / world)  # the peers' published slots
    out = state.average(grads[0].clone())
    # DDP's reducer multiplies each gradient by 1 / world while filling its bucket, then gloo sums the buckets
    assert torch.equal(out, (grads * (1.0 / world)).sum(0))
    assert torch.equal(state.slots[1, 0], grads[0] * (1.0 / world))


def test_a_peer_that_never_publishes_is_a_clear_error(one_rank_group):
    state = shm_allreduce.SharedMemoryAllReduce(numel=4, timeout_s=0.05)
    state.world, state.slots = 2, torch.zeros(2, 2, 4)
    state.flags = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DeepShrinkError, match="rank 0 waited .* other ranks"):
        state.average(torch.ones(4))


def test_a_bucket_larger_than_the_buffer_is_refused(one_rank_group):
    state = shm_allreduce.SharedMemoryAllReduce(numel=4)
    with pytest.raises(DeepShrinkError, match="buckets of 5 values exceed"):
        state.average(torch.ones(5))


@pytest.mark.parametrize(("mode", "machine", "local", "expected"), [
    ("auto", "x86_64", "2", True), ("auto", "x86_64", "1", False), ("auto", "aarch64", "2", False),
    ("auto", "x86_64", None, False), ("gloo", "x86_64", "2", False), ("shm", "x86_64", "2", True),
])
def test_when_shared_memory_is_used(monkeypatch, mode, machine, local, expected):
    monkeypatch.setenv("DEEPSHRINK_DDP_COMM", mode)
    monkeypatch.setattr(shm_allreduce.platform, "machine", lambda: machine)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert shm_allreduce.wanted(2) is expected


@pytest.mark.parametrize(("mode", "local"), [("nccl", "2"), ("shm", "1")])
def test_bad_comm_setting_is_a_clear_error(monkeypatch, mode, local):
    monkeypatch.setenv("DEEPSHRINK_DDP_COMM", mode)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    monkeypatch.setattr(shm_allreduce.platform, "machine", lambda: "x86_64")
    with pytest.raises(ConfigError, match="DEEPSHRINK_DDP_COMM"):
        shm_allreduce.wanted(2)


def test_buckets_published_one_by_one_are_averaged_in_one_exchange(one_rank_group):
    state = shm_allreduce.SharedMemoryAllReduce(numel=8)
    state.world, state.slots = 2, torch.zeros(2, 2, 8)
    state.flags = torch.tensor([0, 1], dtype=torch.int64)
    state.slots[1, 1, :5] = torch.tensor([1.0, 1.0, 1.0, 10.0, 20.0]) / 2  # the peer's two buckets, back to back
    a, b = torch.tensor([3.0, 5.0, 7.0]), torch.tensor([0.0, 2.0])
    state.publish(a)
    state.publish(b)
    assert state.flags.tolist() == [0, 1]  # nothing is published before collect: one sync per step
    out = state.collect()
    assert out[0] is a and out[1] is b
    assert torch.equal(a, torch.tensor([2.0, 3.0, 4.0])) and torch.equal(b, torch.tensor([5.0, 11.0]))
    assert state.flags.tolist() == [1, 1] and state.used == 0


def test_setting_up_leaves_the_random_stream_alone(one_rank_group):
    before = torch.get_rng_state()
    shm_allreduce.SharedMemoryAllReduce(numel=4)
    assert torch.equal(torch.get_rng_state(), before)  # gloo and shared-memory runs draw the same numbers


def test_a_full_shared_memory_folder_is_refused_up_front_and_cleaned(one_rank_group, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shm_allreduce.os, "posix_fallocate", no_space)
    before = set(shm_allreduce._shm_dir().glob("deepshrink-ddp-*"))
    with pytest.raises(shm_allreduce.SharedMemoryUnavailable, match="cannot share 64 bytes"):
        shm_allreduce.SharedMemoryAllReduce(numel=8)
    assert set(shm_allreduce._shm_dir().glob("deepshrink-ddp-*")) == before


def _launch_no_space(out, mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", DEEPSHRINK_PROGRESS="0", DEEPSHRINK_DDP_COMM=mode)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve().parent / "ddp_fallback_worker.py"), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the shared-memory path exists only on x86-64 (elsewhere DDP always uses gloo)")
def test_without_room_in_shared_memory_auto_trains_with_gloo_and_shm_mode_stops(tmp_path):
    auto = _launch_no_space(tmp_path, "auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["shm_calls"] == 0 and r1["shm_calls"] == 0  # fell back to gloo on both ranks together
    assert torch.equal(r0["weights"], r1["weights"])
    forced = _launch_no_space(tmp_path / "forced", "shm")
    assert forced.returncode != 0
    assert "cannot share" in forced.stderr and "bytes of gradients between ranks" in forced.stderr
