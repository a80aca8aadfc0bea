"""The one container every dataset loader returns: a fixed train/test split as float32/int64 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from deepshrink.core.errors import DataError


@dataclass(frozen=True)
class DataSplits:
    """A named dataset with a fixed train/test split.

    ``train``/``test`` hold ``(inputs, labels)`` tensors: inputs float32 of shape
    ``(n, *input_shape)``, labels int64 in ``0..num_classes-1``. The split is fixed so
    that accuracies reported before and after compression are comparable.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    description: str = ""

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            ds = getattr(self, part)
            if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
                raise DataError(f"dataset {self.name!r}: {part} must be a TensorDataset of (inputs, labels)")
            x, y = ds.tensors
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise DataError(
                    f"dataset {self.name!r}: {part} must be float32 inputs and int64 labels, "
                    f"got {x.dtype} and {y.dtype}"
                )
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise DataError(
                    f"dataset {self.name!r}: {part} samples have shape {tuple(x.shape[1:])}, "
                    f"expected {tuple(self.input_shape)}"
                )

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_test(self) -> int:
        return len(self.test)


def _tensor_dataset(name: str, part: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> TensorDataset:
    """Convert one numpy split to tensors, checking counts and label range."""
    if len(x) != len(y):
        raise DataError(f"dataset {name!r}: {part} has {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"dataset {name!r}: {part} split is empty")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"dataset {name!r}: {part} labels must be integers, got {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"dataset {name!r}: {part} labels span {lo}..{hi}, expected 0..{num_classes - 1}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return TensorDataset(xt, yt)


def make_splits(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    description: str = "",
) -> DataSplits:
    """Build a validated :class:`DataSplits` from numpy arrays (inputs already scaled and shaped)."""
    train = _tensor_dataset(name, "train", x_train, y_train, num_classes)
    test = _tensor_dataset(name, "test", x_test, y_test, num_classes)
    return DataSplits(
        name=name,
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        description=description,
    )
