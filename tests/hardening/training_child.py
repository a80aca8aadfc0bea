"""Training children for the kill tests, started from a fresh forkserver process.

A child made by a plain ``os.fork()`` cannot run backward once its parent has run autograd on a machine with
a GPU (torch's autograd device threads do not survive a fork), so the tests that kill training start their
children here: forked from a clean server process that has only imported torch and deepshrink."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from deepshrink.models import create
from deepshrink.train import Trainer
from deepshrink.train.trainer import TrainConfig


def tiny_data(n: int = 64) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create("mlp", in_features=10, hidden=[64, 64], num_classes=3)


def _train(cfg: TrainConfig, checkpoint: str, n: int, started: str) -> None:
    torch.set_num_threads(1)
    data = tiny_data(n)
    # warm up as a forked child of a process that trained would be: a fresh process's first epoch and first
    # checkpoint pay one-time costs (lazy imports and initialisation) longer than the tests' kill delays
    warm = Path(f"{started}.warm")
    Trainer(tiny_model(), cfg.replace(epochs=1), checkpoint=warm, device="cpu", progress=False).fit(data)
    warm.unlink()
    trainer = Trainer(tiny_model(), cfg, checkpoint=checkpoint, device="cpu", progress=False)
    Path(started).touch()
    trainer.fit(data)


def start(cfg: TrainConfig, checkpoint: Path, n: int, timeout: float = 60.0) -> multiprocessing.Process:
    """A child that trains ``tiny_model()`` on ``tiny_data(n)`` with ``cfg``, checkpointing to ``checkpoint``;
    returns once it is about to call ``fit`` (its start-up cost, which differs between machines, is not part
    of the time a test then waits before killing it)."""
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first optimizer in a process imports it (about 2 s)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "deepshrink.models", "deepshrink.train", "training_child"])
    started = Path(f"{checkpoint}.started")
    started.unlink(missing_ok=True)
    proc = ctx.Process(target=_train, args=(cfg, str(checkpoint), n, str(started)), daemon=True)
    proc.start()
    deadline = time.monotonic() + timeout
    while not started.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            kill(proc)
            raise RuntimeError(f"training child did not start (exit code {proc.exitcode})")
        time.sleep(0.001)
    started.unlink()
    return proc


def kill(proc: multiprocessing.Process) -> int:
    """SIGKILL ``proc``; returns its exit code (``-SIGKILL`` when the signal ended it)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join()
    return proc.exitcode
