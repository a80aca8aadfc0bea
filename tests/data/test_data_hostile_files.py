"""Dataset files a user (or an attacker) may hand over: headers whose sizes overflow, gzip bombs, NaN inputs;
and a run folder resumed with another dataset folder of the same format."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from deepshrink.core.errors import DataError
from deepshrink.data import DataSplits
from deepshrink.data.files import _read_file, parse_idx


def test_an_idx_header_whose_size_overflows_is_a_data_error(tmp_path):
    data = struct.pack(">I", 0x0803) + struct.pack(">3I", 2**22, 2**21, 2**21) + b"\0" * 4
    with pytest.raises(DataError, match="truncated, header says"):
        parse_idx(tmp_path / "x", data, 0x0803)


def test_a_gzip_file_that_decompresses_past_the_limit_is_refused(tmp_path):
    bomb = tmp_path / "labels.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(b"\0" * 2_000_000)
    assert bomb.stat().st_size < 10_000
    with pytest.raises(DataError, match="more than the 1000000-byte limit"):
        _read_file(bomb, limit=1_000_000)
    assert len(_read_file(bomb, limit=2_000_000)) == 2_000_000


def test_nan_inputs_are_a_data_error_naming_the_sample():
    x = torch.zeros(4, 3)
    x[2, 1] = float("nan")
    good = TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="train inputs contain NaN or inf .first in sample 2"):
        DataSplits("user", TensorDataset(x, torch.zeros(4, dtype=torch.int64)), good, 2, (3,))


def _idx_folder(folder, labels_shift: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 60), ("t10k", 20)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = ((np.arange(n) + labels_shift) % 10).astype(np.uint8)
        (folder / f"{part}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (folder / f"{part}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())


def test_another_dataset_folder_of_the_same_format_is_not_resumed(tmp_path):
    from deepshrink.core.errors import ConfigError
    from deepshrink.recipe import load_recipe
    from deepshrink.recipe.runner import run_recipe

    _idx_folder(tmp_path / "a", 0)
    _idx_folder(tmp_path / "b", 1)
    recipe = load_recipe("deep_compression_lenet300")
    kwargs = {"model": "lenet300", "out": tmp_path / "run", "quick": True, "progress": False, "latency": False}
    run_recipe(recipe, data=str(tmp_path / "a"), **kwargs)
    with pytest.raises(ConfigError, match="holds a run of another"):
        run_recipe(recipe, data=str(tmp_path / "b"), **kwargs)


def test_a_cached_copy_that_fails_its_check_is_rebuilt(tmp_path, monkeypatch):
    from deepshrink.data import cache

    monkeypatch.setattr(cache, "cache_dir", lambda: tmp_path)
    spec = {"y": (np.dtype(np.int64), (4,))}
    good = {"y": np.arange(4, dtype=np.int64)}
    cache.cached_arrays("k", lambda: good, spec)
    with np.load(tmp_path / "k.npz") as z:
        assert z["y"].tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "k.npz", y=np.arange(4, dtype=np.int64) + 7)  # right keys, dtypes, shapes; bad labels
    got = cache.cached_arrays("k", lambda: good, spec, valid=lambda a: int(a["y"].max()) <= 9)
    assert got["y"].tolist() == [0, 1, 2, 3]
