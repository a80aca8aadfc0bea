"""CIFAR-10 binary folders: batches written by the test in the real record format, and malformed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepshrink.core.errors import DataError
from deepshrink.data import load, load_cifar10_folder

RECORD = 3073


def batch_bytes(labels: np.ndarray, images: np.ndarray) -> bytes:
    """Each record: one label byte, then 1024 red, 1024 green, 1024 blue bytes (row-major 32x32)."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def make_folder(
    folder: Path, batches: tuple[int, ...] = (1, 2), n: int = 6
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in batches] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(batch_bytes(labels, images))
        out[name] = (labels, images)
    return out


def test_loads_real_format(tmp_path: Path) -> None:
    written = make_folder(tmp_path)
    s = load_cifar10_folder(tmp_path)
    assert s.name == "cifar10" and s.input_shape == (3, 32, 32) and s.num_classes == 10
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (12, 3, 32, 32)
    labels = np.concatenate([written["data_batch_1.bin"][0], written["data_batch_2.bin"][0]])
    assert y.tolist() == labels.tolist()
    assert torch.equal(x[6], torch.from_numpy(written["data_batch_2.bin"][1][0]).float() / 255)
    assert s.test.tensors[1].tolist() == written["test_batch.bin"][0].tolist()


def test_channel_planes_are_in_rgb_order(tmp_path: Path) -> None:
    record = bytes([3]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (tmp_path / "data_batch_1.bin").write_bytes(record)
    (tmp_path / "test_batch.bin").write_bytes(record)
    x = load_cifar10_folder(tmp_path).train.tensors[0][0]
    assert [round(x[c].mean().item() * 255) for c in range(3)] == [10, 20, 30]


def test_subfolder_and_any_subset_of_batches(tmp_path: Path) -> None:
    make_folder(tmp_path / "cifar-10-batches-bin", batches=(3, 5))
    s = load(tmp_path)  # auto-detected, descends into cifar-10-batches-bin/
    assert s.num_train == 12 and s.num_test == 6
    assert "data_batch_3.bin" in s.description and "data_batch_1.bin" not in s.description
    assert load(f"cifar10:{tmp_path}").num_train == 12


def _break(folder: Path, case: str) -> str:
    if case == "missing-test":
        (folder / "test_batch.bin").unlink()
        return "test_batch.bin"
    if case == "no-train-batches":
        (folder / "data_batch_1.bin").unlink()
        (folder / "data_batch_2.bin").unlink()
        return "data_batch_1.bin"
    if case == "truncated":
        p = folder / "data_batch_2.bin"
        p.write_bytes(p.read_bytes()[:-1])
        return "data_batch_2.bin"
    if case == "wrong-record-size":
        (folder / "test_batch.bin").write_bytes(bytes(3072 * 4))
        return "test_batch.bin"
    if case == "label-out-of-range":
        p = folder / "data_batch_1.bin"
        data = bytearray(p.read_bytes())
        data[2 * RECORD] = 10
        p.write_bytes(bytes(data))
        return "data_batch_1.bin"
    if case == "empty":
        (folder / "test_batch.bin").write_bytes(b"")
        return "test_batch.bin"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    ["missing-test", "no-train-batches", "truncated", "wrong-record-size", "label-out-of-range", "empty"],
)
def test_malformed_folder_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    make_folder(tmp_path)
    culprit = _break(tmp_path, case)
    with pytest.raises(DataError) as info:
        load_cifar10_folder(tmp_path)
    assert culprit in str(info.value) and "\n" not in str(info.value)


def test_label_error_names_the_record(tmp_path: Path) -> None:
    make_folder(tmp_path)
    _break(tmp_path, "label-out-of-range")
    with pytest.raises(DataError, match="record 2 has label 10"):
        load_cifar10_folder(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10_folder(tmp_path / "cifar")
