"""File sizes, compression ratios and snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ArtifactError, ConfigError
from deepshrink.measure import Snapshot, compression_ratio, file_bytes, take_snapshot


def test_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"x" * 1000)
    assert file_bytes(path) == 1000
    assert file_bytes(str(path)) == 1000


def test_file_bytes_missing_names_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="nope.bin"):
        file_bytes(tmp_path / "nope.bin")
    with pytest.raises(ArtifactError, match="not a regular file"):
        file_bytes(tmp_path)


def test_compression_ratio() -> None:
    assert compression_ratio(268, 67) == pytest.approx(4.0)
    assert compression_ratio(1000, 3) == pytest.approx(1000 / 3)
    with pytest.raises(ConfigError):
        compression_ratio(100, 0)


def test_take_snapshot(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight[0, :] = 0.0  # 10 zeros
    artifact = tmp_path / "m.dsk"
    artifact.write_bytes(b"\0" * 123)
    x = torch.randn(4, 10)
    data = (x, torch.zeros(4, dtype=torch.long))
    snap = take_snapshot("pruned", model, x, eval_data=data, artifact_path=artifact)
    assert snap.name == "pruned"
    assert snap.params == 67
    assert snap.nonzeros == 57
    assert snap.macs == 4 * 10 * 5 + 4 * 5 * 2
    assert snap.artifact_bytes == 123
    assert snap.latency_ms is None
    assert snap.accuracy is not None and 0.0 <= snap.accuracy <= 1.0
    assert snap.to_dict()["nonzeros"] == 57
    assert list(snap.to_dict()) == [
        "name", "accuracy", "loss", "artifact_bytes", "params", "nonzeros", "macs", "latency_ms",
    ]


def test_take_snapshot_minimal_with_latency() -> None:
    snap = take_snapshot("base", nn.Linear(3, 2), torch.randn(2, 3), latency=True)
    assert isinstance(snap, Snapshot)
    assert snap.accuracy is None and snap.loss is None and snap.artifact_bytes is None
    assert snap.latency_ms is not None and snap.latency_ms > 0
    assert snap.macs == 12
