"""deepshrink.data.load dispatch, format detection, error messages and seeded loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.data import available, detect_folder_format, load, make_loaders, make_splits


def toy(n_train: int = 10, n_test: int = 6):
    x = np.arange(n_train * 2, dtype=np.float32).reshape(n_train, 2)
    xt = np.arange(n_test * 2, dtype=np.float32).reshape(n_test, 2)
    return make_splits("toy", x, np.arange(n_train) % 3, xt, np.arange(n_test) % 3, num_classes=3)


def test_available_lists_registered_names() -> None:
    assert available() == ["digits", "mnist1d", "mnist5k"]


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(DataError) as info:
        load("cifar100")
    msg = str(info.value)
    assert "'cifar100'" in msg and "digits, mnist1d, mnist5k" in msg


def test_missing_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        load(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="give a folder"):
        load("cifar10:")


def test_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        load(str(tmp_path / "x.bin"))


def test_non_string_is_rejected() -> None:
    with pytest.raises(DataError, match="int"):
        load(3)  # type: ignore[arg-type]


def test_detect_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as info:
        detect_folder_format(tmp_path)
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "test_batch.bin" in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match="cannot tell"):
        load(tmp_path)


def test_detect_formats(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    (tmp_path / "b" / "cifar-10-batches-bin").mkdir(parents=True)
    (tmp_path / "b" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"")
    assert detect_folder_format(tmp_path / "a") == "idx"
    assert detect_folder_format(tmp_path / "b") == "cifar10"
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load(tmp_path / "a")  # detected as IDX, then the missing train file is named


def _order(loader) -> list[float]:
    return torch.cat([x[:, 0] for x, _ in loader]).tolist()


def test_make_loaders_is_seeded() -> None:
    s = toy()
    a_train, a_test = make_loaders(s, 4, seed=1)
    b_train, _ = make_loaders(s, 4, seed=1)
    c_train, _ = make_loaders(s, 4, seed=2)
    assert _order(a_train) == _order(b_train) != _order(c_train)
    assert sorted(_order(a_train)) == _order(make_loaders(s, 4, shuffle=False)[0])
    assert _order(a_test) == [float(2 * i) for i in range(6)]
    assert [len(x) for x, _ in a_test] == [4, 2]


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_make_loaders_rejects_bad_batch_size(bad: object) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        make_loaders(toy(), bad)  # type: ignore[arg-type]


def test_make_splits_checks_labels() -> None:
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(DataError, match="labels span"):
        make_splits("toy", x, np.array([0, 1, 5]), x, np.array([0, 1, 2]), num_classes=3)
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        make_splits("toy", x, np.array([0, 1]), x, np.array([0, 1, 2]), num_classes=3)
