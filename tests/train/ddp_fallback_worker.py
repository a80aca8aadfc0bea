"""Worker for test_train_shm_allreduce.py under torchrun: /dev/shm "full" (fallocate fails), train anyway.

Rank r saves its final weights and how many shared-memory exchanges ran to OUT/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

torch.set_num_threads(1)

from deepshrink.train import TrainConfig, Trainer, shm_allreduce  # noqa: E402


def _no_space(fd: int, offset: int, length: int) -> None:
    raise OSError(28, "No space left on device")


def main(out: Path) -> None:
    shm_allreduce.os.posix_fallocate = _no_space
    calls = [0]
    real = shm_allreduce.SharedMemoryAllReduce.collect

    def counting(self):
        calls[0] += 1
        return real(self)

    shm_allreduce.SharedMemoryAllReduce.collect = counting
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    Trainer(model, TrainConfig(epochs=2, batch_size=32, lr=0.1), progress=False, device="cpu").fit(data)
    torch.save({"weights": torch.cat([p.detach().flatten() for p in model.parameters()]), "shm_calls": calls[0]},
               out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
