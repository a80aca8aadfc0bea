"""Gradient averaging through shared memory for data-parallel ranks that share one CPU host.

DDP on CPU averages gradients with gloo, which sends them over loopback TCP from background threads. On a
small machine those threads compete with the training threads for the same cores: on 2 cores, gloo's
all-reduce of LeNet-5's 1.7 MB of gradients costs ~6 ms of a ~30 ms step, more than two processes save
over one. When every rank runs on this host, :class:`SharedMemoryAllReduce` replaces it with a DDP
communication hook that copies each gradient bucket into this rank's shared-memory slot as it becomes
ready and, at the step's last bucket, synchronises once with the other ranks and sums their slots in the
calling thread: no extra threads, no sockets, one wait per step.

Protocol (exchanges c = 1, 2, ..., one per step, identical on every rank as DDP's buckets are): rank r
writes slot[c % 2][r], then sets flag[r] = c, waits until every flag >= c and reads all slots of parity
c % 2. A rank writes parity c % 2 again only for exchange c + 2, after every rank published c + 1, which
each does only after it finished reading exchange c; so two parities suffice. The flag store must
become visible after the slot stores: x86-64's total store order guarantees that, so the hook is used
only there (elsewhere, and across hosts, DDP keeps gloo).
"""

import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from deepshrink.core.errors import ConfigError, DeepShrinkError

_SPIN_BEFORE_SLEEP = 2000


def _shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def supported(world_size: int) -> bool:
    """Whether this job can average through shared memory: x86-64 ranks, all on this host (torchrun's
    LOCAL_WORLD_SIZE equals the world size)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return platform.machine().lower() in ("x86_64", "amd64") and local.isdigit() and int(local) == world_size


def _mode() -> str:
    mode = os.environ.get("DEEPSHRINK_DDP_COMM", "auto").strip().lower() or "auto"
    if mode not in ("auto", "gloo", "shm"):
        raise ConfigError(f"DEEPSHRINK_DDP_COMM must be auto, gloo or shm, got {mode!r}")
    return mode


def required() -> bool:
    """``DEEPSHRINK_DDP_COMM=shm``: failing to set up shared memory is an error, not a fall-back to gloo."""
    return _mode() == "shm"


def wanted(world_size: int) -> bool:
    """``DEEPSHRINK_DDP_COMM``: ``auto`` (default: shared memory where :func:`supported`), ``gloo`` (never),
    ``shm`` (required: an error where unsupported)."""
    mode = _mode()
    if mode == "shm" and not supported(world_size):
        raise ConfigError("DEEPSHRINK_DDP_COMM=shm needs x86-64 and every rank on this host (LOCAL_WORLD_SIZE "
                          f"= WORLD_SIZE = {world_size}); use auto or gloo")
    return mode != "gloo" and supported(world_size)


class SharedMemoryUnavailable(DeepShrinkError):
    """The ranks could not set up the shared segment (e.g. a small /dev/shm); every rank raises it together."""


class SharedMemoryAllReduce:
    """State of the shared-memory DDP communication hook (register with :meth:`register`).

    ``numel`` is the largest bucket (the model's trainable parameter count bounds it). Collective: every
    rank must construct it, in the same order relative to other collectives; if any rank cannot map the
    segment, all raise :class:`SharedMemoryUnavailable`.
    """

    def __init__(self, numel: int, timeout_s: float = 600.0) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.numel, self.timeout_s, self.calls = int(numel), float(timeout_s), 0
        # os.urandom, not torch's generator: the hook must not shift any rank's random stream
        token = torch.tensor([int.from_bytes(os.urandom(7), "little") if self.rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(token, 0)
        path = _shm_dir() / f"deepshrink-ddp-{int(token):016x}"
        size = 2 * self.world * self.numel
        flags_path = path.with_suffix(".flags")
        ok = torch.ones(1)
        try:
            if self.rank == 0:  # reserve every page now: a full tmpfs fails here, not as SIGBUS mid-training
                for p, nbytes in ((path, 4 * size), (flags_path, 8 * self.world)):
                    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    try:
                        os.posix_fallocate(fd, 0, nbytes)
                    finally:
                        os.close(fd)
        except OSError:
            ok.zero_()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # rank 0's files exist before anyone opens them
        try:
            if not ok.item() or not path.exists():
                raise FileNotFoundError(path)
            buf = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32)
            self.flags = torch.from_file(str(flags_path), shared=True, size=self.world, dtype=torch.int64)
        except (OSError, RuntimeError):
            ok.zero_()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # everyone mapped both files (or nobody uses them)
        if self.rank == 0:  # the mappings outlive the names; nothing is left behind if a rank dies
            for p in (path, flags_path):
                p.unlink(missing_ok=True)
        if not ok.item():
            raise SharedMemoryUnavailable(f"distributed: cannot share {4 * size:,} bytes of gradients between ranks "
                                          f"through {path.parent}")
        self.slots = buf.view(2, self.world, self.numel)
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.used = 0
        self.futures: list[torch.futures.Future[torch.Tensor]] = []

    def _wait(self, call: int) -> None:
        spins, start = 0, time.monotonic()
        while int(self.flags.min()) < call:
            spins += 1
            if spins > _SPIN_BEFORE_SLEEP:
                time.sleep(5e-5)
                if time.monotonic() - start > self.timeout_s:
                    raise DeepShrinkError(f"distributed: rank {self.rank} waited {self.timeout_s:.0f} s for the other "
                                        "ranks' gradients (a rank stopped or diverged in its steps)")

    def average(self, grad: torch.Tensor) -> torch.Tensor:
        """Replace ``grad`` (a flat tensor) in place by its mean over ranks, and return it."""
        self.publish(grad)
        return self.collect()[0]

    def publish(self, grad: torch.Tensor) -> None:
        """Copy ``grad`` into this rank's slot of the current exchange (more may follow before collect)."""
        n = grad.numel()
        if self.used + n > self.numel:
            raise DeepShrinkError(f"distributed: gradient buckets of {self.used + n} values exceed the shared "
                                  f"buffer ({self.numel})")
        slot = self.slots[(self.calls + 1) % 2, self.rank, self.used:self.used + n]
        # grad x (1 / world) while copying, as DDP's own reducer does before gloo sums: the same mean, no divide pass
        torch.mul(grad.reshape(-1), 1.0 / self.world, out=slot)
        self.pending.append((grad, self.used))
        self.used += n

    def collect(self) -> list[torch.Tensor]:
        """Publish this rank's slot, wait for every rank's, and average each published tensor in place."""
        self.calls += 1
        self.flags[self.rank] = self.calls
        self._wait(self.calls)
        slots = self.slots[self.calls % 2]
        out = []
        for grad, start in self.pending:
            parts, flat = slots[:, start:start + grad.numel()], grad.view(-1)
            if self.world == 2:  # one pass, cheaper than a sum over the rank dimension
                torch.add(parts[0], parts[1], out=flat)
            else:
                torch.sum(parts, 0, out=flat)
            out.append(grad)
        self.pending, self.used = [], 0
        return out

    def register(self, ddp: torch.nn.parallel.DistributedDataParallel) -> None:
        ddp.register_comm_hook(self, shared_memory_hook)


def shared_memory_hook(state: SharedMemoryAllReduce, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook (real annotations: DDP checks them). Buckets are copied as they become ready;
    at the step's last bucket the ranks synchronise once and every bucket's future completes."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    state.publish(bucket.buffer())
    state.futures.append(fut)
    if bucket.is_last():
        futures, state.futures = state.futures, []
        for f, grad in zip(futures, state.collect(), strict=True):
            f.set_result(grad)
    return fut
