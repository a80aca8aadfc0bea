"""One row of a compression report: accuracy, size, sparsity, compute and speed of a model stage."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from deepshrink.measure.accuracy import evaluate
from deepshrink.measure.count import count_nonzeros, count_params
from deepshrink.measure.flops import count_macs
from deepshrink.measure.latency import measure_latency
from deepshrink.measure.size import file_bytes


@dataclass
class Snapshot:
    """Measurements of one stage; fields that were not measured are None."""

    name: str
    accuracy: float | None
    loss: float | None
    artifact_bytes: int | None
    params: int
    nonzeros: int
    macs: int
    latency_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (field name -> value)."""
        return asdict(self)


def take_snapshot(
    name: str,
    model: nn.Module,
    example_inputs: Any,
    *,
    eval_data: Any = None,
    artifact_path: str | os.PathLike[str] | None = None,
    latency: bool = False,
) -> Snapshot:
    """Measure ``model`` now: counts and MACs always; accuracy, file size and median latency on request."""
    result = evaluate(model, eval_data) if eval_data is not None else None
    return Snapshot(
        name=name,
        accuracy=result.accuracy if result else None,
        loss=result.loss if result else None,
        artifact_bytes=file_bytes(artifact_path) if artifact_path is not None else None,
        params=count_params(model),
        nonzeros=count_nonzeros(model),
        macs=count_macs(model, example_inputs),
        latency_ms=measure_latency(model, example_inputs).median_ms if latency else None,
    )
