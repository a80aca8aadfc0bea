"""Test-wide settings: no progress bars, two threads, a private dataset cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DEEPSHRINK_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "DEEPSHRINK_CACHE" not in os.environ:
        os.environ["DEEPSHRINK_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
