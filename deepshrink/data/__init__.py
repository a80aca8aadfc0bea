"""Datasets for training and evaluating compressed models: bundled offline datasets and on-disk folders.

``load("mnist5k")`` returns a registered dataset; ``load("/data/fashion")`` auto-detects an
MNIST-style IDX or CIFAR-10 binary folder; ``load("idx:PATH")`` / ``load("cifar10:PATH")``
force the format. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.data.base import DataSplits, make_splits
from deepshrink.data.embedded import DATASETS
from deepshrink.data.files import detect_folder_format, load_cifar10_folder, load_idx_folder

__all__ = [
    "DATASETS",
    "DataSplits",
    "available",
    "detect_folder_format",
    "load",
    "load_cifar10_folder",
    "load_idx_folder",
    "make_loaders",
    "make_splits",
]

_PREFIXES = ("idx", "cifar10")


def available() -> list[str]:
    """Names of the registered (bundled) datasets, sorted."""
    return DATASETS.names()


def _idx_name(folder: Path) -> str:
    """Dataset name for an IDX folder: ``fashion-mnist`` when the path says so, else ``mnist``."""
    return "fashion-mnist" if "fashion" in str(folder).lower() else "mnist"


def _load_folder(folder: Path, fmt: str | None = None) -> DataSplits:
    fmt = fmt or detect_folder_format(folder)
    if fmt == "idx":
        return load_idx_folder(folder, name=_idx_name(folder))
    return load_cifar10_folder(folder)


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\", os.sep)) or text.startswith((".", "~"))


def load(name_or_path: str | os.PathLike[str]) -> DataSplits:
    """Load a registered dataset by name, or a dataset folder (optional ``idx:`` / ``cifar10:`` prefix)."""
    try:
        return _load(name_or_path)
    except PermissionError as exc:  # a folder (or a parent) without read/search permission
        raise DataError(f"dataset {name_or_path}: cannot read {exc.filename or 'it'} (permission denied)") from None


def _load(name_or_path: str | os.PathLike[str]) -> DataSplits:
    if isinstance(name_or_path, os.PathLike):
        return _load_folder(Path(name_or_path).expanduser())
    if not isinstance(name_or_path, str):
        raise DataError(f"dataset must be a name or a folder path, got {type(name_or_path).__name__}")
    text = name_or_path
    if text in DATASETS:
        return DATASETS.get(text)()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in _PREFIXES:
        if not rest:
            raise DataError(f"dataset {text!r}: give a folder after '{prefix}:'")
        return _load_folder(Path(rest).expanduser(), prefix.lower())
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.exists():
        raise DataError(f"dataset path {path} is not a folder")
    if _looks_like_path(text):
        raise DataError(f"dataset folder {path} does not exist")
    choices = ", ".join(available())
    raise DataError(
        f"unknown dataset {text!r}; choose one of: {choices} "
        "(or a folder, optionally as idx:PATH or cifar10:PATH; for sentence encoders the text dataset pydocs)"
    )


def make_loaders(
    splits: DataSplits, batch_size: int, *, seed: int = 0, shuffle: bool = True
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders; the train order comes from a generator seeded with ``seed`` (reproducible)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=shuffle, generator=generator)
    test = DataLoader(splits.test, batch_size=batch_size, shuffle=False)
    return train, test
