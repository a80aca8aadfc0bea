"""Worker launched by test_train_distributed.py under torchrun (2 processes, gloo on loopback).

Each rank trains the same tiny problems through the unchanged Trainer / distill API and saves its
final weights and the list of files it wrote to OUT/rank<r>.pt, for the test to compare.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

torch.set_num_threads(1)

import deepshrink.train.trainer as trainer_module  # noqa: E402
from deepshrink.core.errors import DeepShrinkError  # noqa: E402
from deepshrink.distill import DistillConfig, FeatureLink, distill  # noqa: E402
from deepshrink.train import TrainConfig, Trainer, shm_allreduce  # noqa: E402

WRITES: list[str] = []
_real_writer = trainer_module.atomic_writer


@contextlib.contextmanager
def _logging_writer(path):  # records every checkpoint write this rank makes
    WRITES.append(str(path))
    with _real_writer(path) as fh:
        yield fh


trainer_module.atomic_writer = _logging_writer

SHM_CALLS = [0]
_real_collect = shm_allreduce.SharedMemoryAllReduce.collect


def _counting_collect(self):  # records that gradients went through shared memory
    SHM_CALLS[0] += 1
    return _real_collect(self)


shm_allreduce.SharedMemoryAllReduce.collect = _counting_collect


def blobs(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long()
    return TensorDataset(x, y)


def model(seed: int, hidden: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


FULL_BATCH = TrainConfig(epochs=3, batch_size=64, optimizer="sgd", momentum=0.0, lr=0.5, schedule="constant",
                         seed=0)
MINI_BATCH = TrainConfig(epochs=8, batch_size=32, lr=0.05, seed=1)
DISTILL = DistillConfig(temperature=2.0, alpha=0.5, features=(FeatureLink("1", "1"),),
                        train=TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=2))


def _diverge_on_rank_one(rank: int) -> str:
    """Rank 1's loss turns NaN at its 4th step: every rank must stop there with the divergence error."""
    calls = [0]

    def loss_fn(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        loss = torch.nn.functional.cross_entropy(net(x), y)
        return loss * float("nan") if rank == 1 and calls[0] == 4 else loss

    try:
        Trainer(model(seed=40), MINI_BATCH, loss_fn=loss_fn, device="cpu", progress=False).fit(blobs(256, seed=1))
    except DeepShrinkError as exc:
        return f"{calls[0]}: {exc}"
    return "no error"


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    # each rank starts from a different init: DDP must broadcast rank 0's weights
    full = model(seed=rank)
    res_full = Trainer(full, FULL_BATCH, checkpoint=out / "full.pt", device="cpu", progress=False).fit(blobs(64))
    mini = model(seed=10 + rank)
    res_mini = Trainer(mini, MINI_BATCH, device="cpu", progress=False).fit(blobs(256, seed=1))
    teacher, student = model(seed=20, hidden=16), model(seed=30 + rank)
    distill(student, teacher, blobs(128, seed=2), DISTILL, checkpoint=out / "distill.pt", device="cpu",
            progress=False)
    diverged = _diverge_on_rank_one(rank)
    torch.save({
        "full": full.state_dict(), "mini": mini.state_dict(), "student": student.state_dict(),
        "full_history": torch.tensor(res_full.history, dtype=torch.float64),
        "mini_steps": res_mini.steps, "writes": list(WRITES), "diverged": diverged,
        "shm_calls": SHM_CALLS[0],
    }, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
