"""Data tests use a private disk cache so they never read or write the user's ~/.cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("DEEPSHRINK_CACHE", str(tmp_path_factory.mktemp("deepshrink-cache")))
    yield
    mp.undo()
