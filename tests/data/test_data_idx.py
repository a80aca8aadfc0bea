"""MNIST / Fashion-MNIST IDX folders: real-format files (plain and gzip) and every malformed case."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deepshrink.core.errors import DataError
from deepshrink.data import load, load_idx_folder

TRAIN_IMG, TRAIN_LBL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMG, TEST_LBL = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array exactly as the MNIST distribution does (magic 0x0000080N, big-endian dims)."""
    header = struct.pack(">I", 0x800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_folder(folder: Path, gz: bool = False, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        TRAIN_IMG: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LBL: np.arange(n_train, dtype=np.uint8) % 10,
        TEST_IMG: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LBL: (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write(folder / name, idx_bytes(arr), gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_loads_real_format(tmp_path: Path, gz: bool) -> None:
    arrays = make_folder(tmp_path / "mnist", gz=gz)
    s = load_idx_folder(tmp_path / "mnist")
    assert s.name == "mnist" and s.input_shape == (1, 28, 28) and s.num_classes == 10
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(arrays[TRAIN_IMG]).float() / 255)
    assert y.tolist() == arrays[TRAIN_LBL].tolist()
    assert s.test.tensors[1].tolist() == arrays[TEST_LBL].tolist()
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_mixed_plain_and_gzip_files(tmp_path: Path) -> None:
    make_folder(tmp_path, gz=True)
    (tmp_path / f"{TEST_IMG}.gz").rename(tmp_path / "tmp.gz")
    (tmp_path / TEST_IMG).write_bytes(gzip.decompress((tmp_path / "tmp.gz").read_bytes()))
    (tmp_path / "tmp.gz").unlink()
    assert load_idx_folder(tmp_path).num_test == 10


def test_fashion_mnist_naming_works_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "FashionMNIST" / "raw"
    arrays = make_folder(folder, gz=True)
    s = load(folder)
    assert s.name == "fashion-mnist"
    assert s.test.tensors[1].tolist() == arrays[TEST_LBL].tolist()
    assert load_idx_folder(folder, name="fashion-mnist").name == "fashion-mnist"
    assert load(f"idx:{folder}").num_train == 20


def _break(folder: Path, case: str) -> str:
    """Damage one file of a valid plain folder; return the file name the error must mention."""
    img = folder / TRAIN_IMG
    if case == "missing":
        (folder / TEST_LBL).unlink()
        return TEST_LBL
    if case == "wrong-magic":
        img.write_bytes(struct.pack(">I", 0x801) + img.read_bytes()[4:])
        return TRAIN_IMG
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:-100])
        return TRAIN_IMG
    if case == "truncated-header":
        img.write_bytes(img.read_bytes()[:10])
        return TRAIN_IMG
    if case == "trailing-bytes":
        (folder / TEST_IMG).write_bytes((folder / TEST_IMG).read_bytes() + b"\0" * 7)
        return TEST_IMG
    if case == "empty":
        (folder / TRAIN_LBL).write_bytes(b"")
        return TRAIN_LBL
    if case == "count-mismatch":
        (folder / TEST_LBL).write_bytes(idx_bytes(np.zeros(9, np.uint8)))
        return TEST_LBL
    if case == "label-out-of-range":
        labels = np.zeros(20, np.uint8)
        labels[7] = 10
        (folder / TRAIN_LBL).write_bytes(idx_bytes(labels))
        return TRAIN_LBL
    if case == "corrupt-gzip":
        data = gzip.compress(img.read_bytes())
        img.unlink()
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0xFF
        (folder / f"{TRAIN_IMG}.gz").write_bytes(bytes(bad))
        return f"{TRAIN_IMG}.gz"
    if case == "truncated-gzip":
        data = gzip.compress(img.read_bytes())
        img.unlink()
        (folder / f"{TRAIN_IMG}.gz").write_bytes(data[: len(data) // 2])
        return f"{TRAIN_IMG}.gz"
    if case == "not-gzip":
        (folder / f"{TEST_LBL}.gz").write_bytes((folder / TEST_LBL).read_bytes())
        (folder / TEST_LBL).unlink()
        return f"{TEST_LBL}.gz"
    if case == "size-mismatch":
        (folder / TEST_IMG).write_bytes(idx_bytes(np.zeros((10, 14, 14), np.uint8)))
        return folder.name
    raise ValueError(case)


CASES = [
    "missing",
    "wrong-magic",
    "truncated",
    "truncated-header",
    "trailing-bytes",
    "empty",
    "count-mismatch",
    "label-out-of-range",
    "corrupt-gzip",
    "truncated-gzip",
    "not-gzip",
    "size-mismatch",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_folder_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "mnist"
    make_folder(folder)
    culprit = _break(folder, case)
    with pytest.raises(DataError) as info:
        load_idx_folder(folder)
    msg = str(info.value)
    assert culprit in msg and "\n" not in msg


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_idx_folder(tmp_path / "nowhere")


def test_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_idx_folder(tmp_path / "f")


def test_wrong_magic_message_shows_both_values(tmp_path: Path) -> None:
    make_folder(tmp_path)
    shutil.copy(tmp_path / TRAIN_LBL, tmp_path / TRAIN_IMG)
    with pytest.raises(DataError, match="0x00000801, expected 0x00000803"):
        load_idx_folder(tmp_path)
