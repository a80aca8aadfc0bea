"""Measure what compression really buys: parameters, non-zeros, MACs, latency, file size, accuracy."""

from deepshrink.measure.accuracy import EvalResult, evaluate
from deepshrink.measure.count import LayerStats, count_nonzeros, count_params, fp32_bytes, layer_stats
from deepshrink.measure.flops import count_macs, count_macs_by_module
from deepshrink.measure.latency import LatencyResult, compare_latency, measure_latency
from deepshrink.measure.size import compression_ratio, file_bytes
from deepshrink.measure.snapshot import Snapshot, take_snapshot

__all__ = [
    "EvalResult",
    "LatencyResult",
    "LayerStats",
    "Snapshot",
    "compare_latency",
    "compression_ratio",
    "count_macs",
    "count_macs_by_module",
    "count_nonzeros",
    "count_params",
    "evaluate",
    "file_bytes",
    "fp32_bytes",
    "layer_stats",
    "measure_latency",
    "take_snapshot",
]
