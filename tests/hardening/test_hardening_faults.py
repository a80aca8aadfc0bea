"""Fault injection: SIGKILL during artifact saves and trainer checkpoints, full disks and failing
syncs / renames. The previous file must always stay intact and loadable, and training resumed after
a kill must reach the same weights as an uninterrupted run."""

from __future__ import annotations

import errno
import os
import random
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import deepshrink.core.fileio as fileio
import training_child  # beside this file: the kill tests' training children
from deepshrink.artifact import load, save
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError
from deepshrink.models import create
from deepshrink.train import Trainer
from deepshrink.train.trainer import TrainConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child (one thread); returns its pid. The child never returns."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            torch.set_num_threads(1)
            body()
        except BaseException:  # noqa: BLE001 - the exit code is the report, the traceback says why
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _kill(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _versions() -> list[nn.Module]:
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        out.append(create("lenet300").eval())  # ~1 MiB dense: a write takes long enough to be hit
    return out


def test_sigkill_during_save_never_damages_the_previous_artifact(tmp_path):
    models = _versions()
    states = [m.state_dict() for m in models]
    path = tmp_path / "m.dsk"
    save(models[0], path, info={"v": 0})
    rng = random.Random(0)
    seen, interrupted, last = set(), 0, 0
    for kill in range(50):
        base = 1000 * (kill + 1)

        def body(base: int = base) -> None:
            i = base
            while True:
                save(models[i % 3], path, info={"v": i})
                i += 1

        pid = _fork(body)
        time.sleep(rng.uniform(0.002, 0.06))
        _kill(pid)
        leftovers = _temps(tmp_path)
        interrupted += bool(leftovers)
        for p in leftovers:  # a kill mid-write leaves its temp file; the target is untouched
            p.unlink()
        v = container.read_container(path).meta["info"]["v"]
        assert v >= last, "an older version replaced a newer one"
        state = load(path).state_dict()
        assert all(torch.equal(state[k], states[v % 3][k]) for k in state), f"kill {kill}: content != v{v}"
        seen.add(v)
        last = v
    assert len(seen) > 10, "the saving children made too little progress to test anything"
    assert interrupted >= 1, "no kill landed inside a write"


_tiny_data, _tiny_model = training_child.tiny_data, training_child.tiny_model


def test_sigkill_during_checkpointing_never_damages_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    data = _tiny_data()
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0)
    Trainer(_tiny_model(), cfg, checkpoint=ckpt, device="cpu", progress=False).fit(data)
    rng = random.Random(1)
    last, interrupted = 1, 0
    for kill in range(15):
        long = cfg.replace(epochs=last + 10_000)

        child = training_child.start(long, ckpt, len(data))
        time.sleep(rng.uniform(0.02, 0.2))
        training_child.kill(child)
        leftovers = _temps(tmp_path)
        interrupted += bool(leftovers)
        for p in leftovers:
            p.unlink()
        state = torch.load(ckpt, weights_only=True)
        assert int(state["epoch"]) >= last and len(state["history"]) == int(state["epoch"])
        model = _tiny_model(5)
        model.load_state_dict(state["model"])
        assert all(torch.isfinite(p).all() for p in model.parameters())
        last = int(state["epoch"])
    assert last > 5, "the training children made too little progress to test anything"
    assert interrupted >= 1, "no kill landed inside a checkpoint write"


def test_resume_after_sigkill_mid_training_reaches_the_same_weights(tmp_path):
    data = _tiny_data(256)
    # 30 short epochs: after the first checkpoint appears, the kill must land before the child finishes
    # even when the parent wakes late on a loaded machine (4 epochs once finished first in CI)
    cfg = TrainConfig(epochs=30, batch_size=16, lr=0.05, seed=3)
    reference = _tiny_model()
    Trainer(reference, cfg, device="cpu", progress=False).fit(data)
    ckpt = tmp_path / "ckpt.pt"
    rng = random.Random(2)

    child = training_child.start(cfg, ckpt, len(data))
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside a later epoch
    assert training_child.kill(child) == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = int(torch.load(ckpt, weights_only=True)["epoch"])
    assert 1 <= killed_at < cfg.epochs
    resumed = _tiny_model(seed=9)  # different init: all state must come from the checkpoint
    res = Trainer(resumed, cfg, checkpoint=ckpt, device="cpu", progress=False).fit(data)
    assert res.epochs_run == cfg.epochs - killed_at
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming from epoch {killed_at}"


# ---- full disk, failing fsync, read-only rename -----------------------------------------------------

class _FullDisk:
    """A file wrapper whose writes fail with ENOSPC once ``room`` bytes have been written."""

    def __init__(self, fh, room: int) -> None:
        self._fh, self._room = fh, room

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._room:
            self._fh.write(bytes(memoryview(data).cast("B")[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


@pytest.mark.parametrize("room", [0, 56, 1000, 100_000])
def test_full_disk_during_save_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch, room):
    path = tmp_path / "m.dsk"
    old_model = _tiny_model(1)
    save(old_model, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k), room))
    with pytest.raises(ArtifactError, match=f"cannot write {path}: No space left on device"):
        save(create("lenet300"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not _temps(tmp_path)
    assert torch.equal(load(path).layers.fc1.weight, old_model.layers.fc1.weight)


@pytest.mark.parametrize("fault", [("fsync", errno.EIO), ("replace", errno.EROFS), ("replace", errno.EACCES)])
def test_failing_sync_or_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch, fault):
    ckpt = tmp_path / "ckpt.pt"
    data = _tiny_data()
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0)
    Trainer(_tiny_model(), cfg, checkpoint=ckpt, device="cpu", progress=False).fit(data)
    before = ckpt.read_bytes()
    name, code = fault

    def boom(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio.os, name, boom)
    with pytest.raises(ArtifactError, match=os.strerror(code)):
        Trainer(_tiny_model(), cfg.replace(epochs=2), checkpoint=ckpt, device="cpu", progress=False).fit(data)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and not _temps(tmp_path)


def test_real_file_size_limit_gives_a_clear_error_with_the_old_file_intact(tmp_path):
    """An OS-level fault, no monkeypatching: RLIMIT_FSIZE in a child makes write() fail with EFBIG."""
    path = tmp_path / "m.dsk"
    save(_tiny_model(1), path)
    before = path.read_bytes()
    report = tmp_path / "report.txt"

    def body() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            save(create("lenet300"), path)
            msg = "saved"
        except ArtifactError as exc:
            msg = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        report.write_text(msg)

    pid = _fork(body)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert report.read_text() == f"cannot write {path}: File too large"
    assert path.read_bytes() == before and not _temps(tmp_path)


def test_temp_files_of_killed_writers_are_cleaned_on_the_next_save(tmp_path: Path) -> None:
    from deepshrink.core.fileio import atomic_write_bytes

    target = tmp_path / "model.dsk"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = tmp_path / f".model.dsk.{int(dead.stdout)}.abc123.tmp"  # as a SIGKILLed writer leaves it
    orphan.write_bytes(b"half")
    live = tmp_path / f".model.dsk.{os.getpid()}.xyz.tmp"  # ours (a concurrent writer): kept
    live.write_bytes(b"busy")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not orphan.exists() and live.exists()


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    from deepshrink.core.fileio import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644
        existing = tmp_path / "kept.bin"
        existing.write_bytes(b"old")
        existing.chmod(0o600)
        atomic_write_bytes(existing, b"new")
        assert existing.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
