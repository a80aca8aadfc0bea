"""The bundled datasets: sizes, shapes, dtypes, ranges, class balance, fixed and disjoint splits."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from deepshrink.core.errors import DataError
from deepshrink.data import DATASETS, DataSplits, load
from deepshrink.data import embedded

EXPECTED = {
    "mnist5k": (4000, 1000, (1, 28, 28)),
    "digits": (1437, 360, (1, 8, 8)),
    "mnist1d": (4000, 1000, (40,)),
}


def _row_hashes(x: torch.Tensor) -> list[str]:
    flat = x.reshape(len(x), -1).numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sizes_shapes_dtypes(name: str) -> None:
    n_train, n_test, shape = EXPECTED[name]
    s = load(name)
    assert s.name == name and s.num_classes == 10 and s.description
    assert s.input_shape == shape
    assert (s.num_train, s.num_test) == (n_train, n_test)
    for ds in (s.train, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape
        assert torch.isfinite(x).all()
        assert set(y.unique().tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_image_datasets_are_scaled_to_unit_range(name: str) -> None:
    s = load(name)
    x = torch.cat([s.train.tensors[0], s.test.tensors[0]])
    assert x.min().item() == 0.0 and x.max().item() == 1.0


def test_mnist5k_pixels_are_multiples_of_1_over_255() -> None:
    x = load("mnist5k").test.tensors[0].double() * 255
    assert torch.allclose(x, x.round(), atol=1e-4)


def test_digits_pixels_are_multiples_of_1_over_16() -> None:
    x = load("digits").train.tensors[0].double() * 16
    assert torch.allclose(x, x.round(), atol=1e-5)


def test_mnist1d_is_standardised_as_published() -> None:
    s = load("mnist1d")
    x = torch.cat([s.train.tensors[0], s.test.tensors[0]]).double()
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert x.min() < -1 and x.max() > 1  # not rescaled to [0, 1]


def test_mnist5k_class_balance_is_exact() -> None:
    s = load("mnist5k")
    assert s.train.tensors[1].bincount().tolist() == [400] * 10
    assert s.test.tensors[1].bincount().tolist() == [100] * 10


def test_digits_split_is_stratified() -> None:
    s = load("digits")
    train = s.train.tensors[1].bincount().double()
    test = s.test.tensors[1].bincount().double()
    frac = test / (train + test)
    assert ((frac - 0.2).abs() < 0.01).all()


def test_mnist1d_classes_are_roughly_balanced() -> None:
    # The published split is a random shuffle of 500 per class, so it is close to, not exactly, balanced.
    s = load("mnist1d")
    train = s.train.tensors[1].bincount()
    test = s.test.tensors[1].bincount()
    assert (train + test).tolist() == [500] * 10
    assert train.min() >= 380 and train.max() <= 420


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_train_and_test_are_disjoint(name: str) -> None:
    # Checked on the data: no source row of these datasets is duplicated, so hashes must not overlap.
    s = load(name)
    train, test = _row_hashes(s.train.tensors[0]), _row_hashes(s.test.tensors[0])
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_repeated_loads_are_cached_and_rebuilds_identical(name: str) -> None:
    first = load(name)
    assert load(name) is first
    builder = getattr(embedded, name)
    builder.cache_clear()
    again = load(name)
    assert again is not first
    for a, b in zip((*first.train.tensors, *first.test.tensors), (*again.train.tensors, *again.test.tensors)):
        assert torch.equal(a, b)


def test_registry_lists_the_bundled_datasets() -> None:
    assert DATASETS.names() == ["digits", "mnist1d", "mnist5k"]
    with pytest.raises(DataError, match="mnist5k"):
        DATASETS.get("cifar100")


def test_datasplits_is_frozen_and_validated() -> None:
    s = load("digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]
    bad = TensorDataset(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="float32"):
        DataSplits("toy", bad, bad, 2, (3,))
    good = TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="shape"):
        DataSplits("toy", good, good, 2, (4,))


def test_mnist5k_uses_every_source_image_once() -> None:
    s = load("mnist5k")
    hashes = _row_hashes(s.train.tensors[0]) + _row_hashes(s.test.tensors[0])
    assert len(set(hashes)) == 5000
    assert np.isclose(s.train.tensors[0].mean().item(), 0.13, atol=0.01)  # MNIST's known mean intensity
