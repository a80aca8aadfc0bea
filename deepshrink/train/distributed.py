"""Data-parallel training under ``torchrun``: process-group set-up, rank helpers and cross-rank reductions.

The trainer calls :func:`setup` at the start of ``fit``. Under ``torchrun --nproc_per_node=N`` (or any
launcher that sets ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT``) with ``WORLD_SIZE > 1`` it
joins the process group (gloo on CPU, nccl on CUDA); otherwise it returns None and training stays
single-process, unchanged.
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deepshrink.core.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"distributed: environment variable {name}={raw!r} is not an integer") from None


def requested_world_size() -> int:
    """WORLD_SIZE from the launcher (1 when absent)."""
    size = _env_int("WORLD_SIZE", 1)
    if size is None or size < 1:
        raise ConfigError(f"distributed: WORLD_SIZE must be >= 1, got {size}")
    return size


def setup(device: torch.device) -> DistContext | None:
    """Join (or reuse) the default process group when launched with WORLD_SIZE > 1; None otherwise.

    On CUDA the process uses GPU ``LOCAL_RANK`` and the nccl backend; on CPU, gloo.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world == 1:
            return None
        local = _env_int("LOCAL_RANK", dist.get_rank())
        return DistContext(dist.get_rank(), world, int(local or 0), str(dist.get_backend()))
    world = requested_world_size()
    if world == 1:
        return None
    if not dist.is_available():
        raise ConfigError("distributed: WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = _env_int("RANK")
    if rank is None or not 0 <= rank < world:
        raise ConfigError(f"distributed: WORLD_SIZE={world} needs RANK in 0..{world - 1}, got {rank}; "
                          "launch with torchrun")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ConfigError(f"distributed: WORLD_SIZE={world} but {var} is not set; launch with torchrun")
    local = _env_int("LOCAL_RANK", rank) or 0
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError("distributed: device 'cuda' but no CUDA device is visible; train on the CPU with "
                              "gloo (device='cpu')")
        if local >= gpus:
            raise ConfigError(f"distributed: local rank {local} needs a CUDA device of its own, but this node has "
                              f"{gpus}; launch at most {gpus} process(es) per node (torchrun "
                              f"--nproc_per_node={gpus}) or train on the CPU with gloo (device='cpu')")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    atexit.register(_teardown)
    return DistContext(rank, world, local, backend)


def _teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        # A DistributedDataParallel wrapper left in a reference cycle (as after training raised) is otherwise
        # freed only after the group is gone, and its reducer then aborts the process (seen with gloo).
        gc.collect()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under a multi-GPU launch, CUDA without an index means this process's GPU (LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and requested_world_size() > 1:
        return torch.device("cuda", _env_int("LOCAL_RANK", _env_int("RANK", 0)) or 0)  # as setup() picks it
    return device


def is_initialized() -> bool:
    """Whether this process has joined a process group (torchrun, after ``setup``)."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True outside a distributed job and on rank 0 inside one: the process that writes files."""
    return not is_initialized() or dist.get_rank() == 0


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Sum ``values`` over ranks (a copy; unchanged outside a distributed job)."""
    if ctx is None:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_rng_states(state: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Stack every rank's ``torch.get_rng_state()`` (``world x bytes``), so a resume restores each rank."""
    if ctx is None:
        return state.unsqueeze(0)
    if ctx.backend == "nccl":
        state = state.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(state) for _ in range(ctx.world_size)]
    dist.all_gather(parts, state)
    return torch.stack([p.cpu() for p in parts])


def same_on_every_rank(values: list[int], ctx: DistContext | None) -> bool:
    """Whether every rank passed the same integers (one all-reduce of them and of their negatives: max == min)."""
    if ctx is None:
        return True
    t = torch.tensor(values + [-v for v in values], dtype=torch.int64)
    if ctx.backend == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    n = len(values)
    return bool((t[:n] == -t[n:]).all())
