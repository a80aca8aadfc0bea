"""The one container every dataset loader returns: a fixed train/test split as float32/int64 tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

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
            finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1) if len(x) else torch.ones(0, dtype=torch.bool)
            if not bool(finite.all()):  # NaN logits argmax to class 0: a silently perfect or useless score
                first = int((~finite).nonzero()[0, 0])
                raise DataError(f"dataset {self.name!r}: {part} inputs contain NaN or inf (first in sample {first})")
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


def tensors_digest(tensors: Any) -> str:
    """A digest of tensors' dtypes, shapes and values (what identifies a model's weights or a dataset)."""
    h = hashlib.sha256()
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_digest(ds: Any) -> str:
    """A digest of a dataset's contents: a TensorDataset's tensors, a Subset's indices into its dataset's
    contents, a list of sentences; otherwise its type and length (contents unknown)."""
    if isinstance(ds, TensorDataset):
        return tensors_digest(ds.tensors)
    if isinstance(ds, Subset):
        return hashlib.sha256(f"{dataset_digest(ds.dataset)}{list(ds.indices)}".encode()).hexdigest()[:16]
    if isinstance(ds, (list, tuple)) and all(isinstance(v, str) for v in ds):
        return hashlib.sha256("\n".join(ds).encode()).hexdigest()[:16]
    return f"{type(ds).__name__}:{len(ds) if hasattr(ds, '__len__') else '?'}"


def data_digest(splits: Any) -> str:
    """A digest of a dataset's splits (``train``/``test`` attributes, or the fields of text splits)."""
    parts = [dataset_digest(getattr(splits, name)) for name in ("train", "test", "queries", "corpus")
             if hasattr(splits, name)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
