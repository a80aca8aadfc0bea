"""Worker for test_train_ddp_user_errors.py under torchrun (2 gloo processes): one user mistake or one run per
MODE; each rank writes OUT/rank<r>.json with the error it raised (or none) and the files it wrote."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

torch.set_num_threads(1)

import deepshrink.core.fileio as fileio  # noqa: E402
from deepshrink.core.errors import DeepShrinkError  # noqa: E402
from deepshrink.train import TrainConfig, Trainer  # noqa: E402

WRITES: list[str] = []
_replace = os.replace


def _logged_replace(src, dst, *args, **kwargs):  # every atomic write ends in a rename onto its target
    WRITES.append(str(dst))
    return _replace(src, dst, *args, **kwargs)


os.replace = _logged_replace
fileio.os.replace = _logged_replace


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def main(mode: str, out: Path) -> None:
    rank = int(os.environ["RANK"])
    error = None
    try:
        if mode == "odd_batch":
            Trainer(model(), TrainConfig(epochs=1, batch_size=3, optimizer="sgd"), device="cpu",
                    progress=False).fit(data())
        elif mode == "mismatch":  # rank 1 was given another learning rate
            Trainer(model(), TrainConfig(epochs=1, batch_size=8, lr=0.1 if rank == 0 else 0.5, optimizer="sgd"),
                    device="cpu", progress=False).fit(data())
        elif mode == "compress":
            import deepshrink

            recipe = {"name": "ddp", "stages": [
                {"kind": "prune", "method": "magnitude", "sparsity": 0.5,
                 "retrain": {"epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.05}}]}
            deepshrink.compress(model(), recipe, train_data=data(), eval_data=data(32), out=out / "run",
                                progress=False)
    except DeepShrinkError as exc:
        error = f"{type(exc).__name__}: {exc}"
    (out / f"rank{rank}.json").write_text(json.dumps({"error": error, "writes": WRITES}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
