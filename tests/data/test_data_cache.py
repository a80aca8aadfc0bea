"""The disk cache of generated arrays, and MNIST-1D generation (offline, RNG-neutral, fingerprinted)."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from deepshrink.data import embedded, load
from deepshrink.data.cache import cache_dir, cached_arrays

SPEC = {"a": (np.float32, (3, 2)), "b": (np.int64, (3,))}


class Builder:
    """Counts calls so tests can tell a cache hit from a rebuild."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.arange(3, dtype=np.int64)}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEEPSHRINK_CACHE", str(tmp_path / "c"))
    return tmp_path / "c"


def test_second_call_reads_the_file(cache: Path) -> None:
    build = Builder()
    first = cached_arrays("k", build, SPEC)
    second = cached_arrays("k", build, SPEC)
    assert build.calls == 1 and (cache / "k.npz").is_file()
    assert all(np.array_equal(first[k], second[k]) for k in SPEC)
    assert not [p for p in cache.iterdir() if p.name != "k.npz"]  # no temp files left behind


@pytest.mark.parametrize(
    "content",
    [b"not a zip at all", b"PK\x03\x04truncated"],
    ids=["garbage", "truncated-zip"],
)
def test_corrupt_file_is_rebuilt_and_replaced(cache: Path, content: bytes) -> None:
    cache.mkdir()
    (cache / "k.npz").write_bytes(content)
    build = Builder()
    out = cached_arrays("k", build, SPEC)
    assert build.calls == 1 and out["a"].shape == (3, 2)
    cached_arrays("k", build, SPEC)
    assert build.calls == 1  # the rewritten file is valid


def test_half_written_npz_is_rebuilt(cache: Path) -> None:
    build = Builder()
    cached_arrays("k", build, SPEC)
    path = cache / "k.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cached_arrays("k", build, SPEC)
    assert build.calls == 2


def test_stale_shape_or_dtype_is_rebuilt(cache: Path) -> None:
    cache.mkdir()
    np.savez(cache / "k.npz", a=np.zeros((4, 2), np.float32), b=np.zeros(3, np.int64))
    build = Builder()
    cached_arrays("k", build, SPEC)
    np.savez(cache / "k.npz", a=np.zeros((3, 2), np.float64), b=np.zeros(3, np.int64))
    cached_arrays("k", build, SPEC)
    assert build.calls == 2


def test_pickled_object_arrays_are_never_loaded(cache: Path) -> None:
    cache.mkdir()
    np.savez(cache / "k.npz", a=np.array([{"x": 1}], dtype=object), b=np.zeros(3, np.int64))
    build = Builder()
    out = cached_arrays("k", build, SPEC)
    assert build.calls == 1 and out["a"].dtype == np.float32


def test_unwritable_cache_still_returns_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("DEEPSHRINK_CACHE", str(blocker / "sub"))
    build = Builder()
    assert cached_arrays("k", build, SPEC)["b"].tolist() == [0, 1, 2]


def test_cache_can_be_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSHRINK_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    assert cache_dir() is None
    build = Builder()
    cached_arrays("k", build, SPEC)
    cached_arrays("k", build, SPEC)
    assert build.calls == 2 and not list(tmp_path.iterdir())


def test_default_cache_dir_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSHRINK_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "deepshrink"


def test_mnist1d_is_generated_offline_without_touching_global_rng(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drive the real load path with no cached copy (generation runs once per session here)."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist1d tried to use the network")

    folder = cache_dir()
    assert folder is not None
    for stale in folder.glob("mnist1d-*.npz"):
        stale.unlink()
    embedded.mnist1d.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    np_before = np.random.get_state()[1].copy()
    py_before = random.getstate()

    load("mnist1d")

    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert os.listdir(tmp_path) == []  # mnist1d's own get_dataset would have written a pickle here
    assert len(list(folder.glob("mnist1d-*.npz"))) == 1


def test_mnist1d_matches_the_published_generator_output() -> None:
    """Fingerprint of make_dataset(get_dataset_args()) from mnist1d 0.0.2.post1 (seed 42)."""
    s = load("mnist1d")
    assert s.train.tensors[1][:12].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9]
    assert s.test.tensors[1][:12].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7]
    head = [-0.33200568, -0.47191036, -0.77869707, -1.00974083, -0.88235259, 0.10393481]
    assert np.allclose(s.train.tensors[0][0, :6].numpy(), head, atol=1e-5)
    tail = [0.44723287, 0.65987563, 0.87773436, 1.19315183]
    assert np.allclose(s.test.tensors[0][-1, -4:].numpy(), tail, atol=1e-5)
