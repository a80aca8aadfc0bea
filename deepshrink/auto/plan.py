"""From sensitivity curves to candidate per-layer settings, ordered from mild to aggressive.

Each layer's cost is an estimate of its bytes in Deep Compression storage (non-zeros x
(weight bits + relative-index bits) plus the codebook); its risk is the accuracy it lost in
the sensitivity scan. For a trade-off weight lambda every layer independently picks the kept
fraction minimising ``bytes + lambda * drop``: big, insensitive layers are pruned hardest, as
Han et al. did by hand. Sweeping lambda from large to small gives a path of ever smaller plans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from deepshrink.sensitivity.scan import SensitivityResult

Plan = dict[str, float]


def index_bits(keep: float) -> float:
    """Rough Huffman-coded relative-index bits per stored weight at kept fraction ``keep``."""
    return float(np.clip(math.log2(1.0 / max(keep, 1e-6)) + 1.0, 1.0, 8.0))


def estimate_layer_bytes(numel: int, keep: float, bits: int) -> float:
    """Estimated bytes of one layer: values, relative indices and a 2^bits float32 codebook."""
    nnz = max(1.0, keep * numel)
    dense_bits = bits * numel  # a dense codebook layer: no indices
    sparse_bits = nnz * (bits + index_bits(keep))
    return min(dense_bits, sparse_bits) / 8.0 + 4.0 * 2**bits


def estimate_bytes(numels: Mapping[str, int], keeps: Mapping[str, float], bits: Mapping[str, int] | int) -> float:
    """Estimated bytes of all planned layers (biases and headers are not counted)."""
    return sum(estimate_layer_bytes(n, keeps[name], bits if isinstance(bits, int) else bits[name])
               for name, n in numels.items())


def fine_keeps(coarse: Sequence[float], per_octave: int = 3) -> list[float]:
    """A denser geometric grid between the scanned kept fractions (curves are interpolated)."""
    lo = min(coarse)
    n = max(2, int(math.ceil(math.log2(1.0 / lo) * per_octave)) + 1)
    return sorted({1.0, *np.geomspace(1.0, lo, n).round(5).tolist()}, reverse=True)


def prune_path(sens: SensitivityResult, *, bits: int = 4, lambdas: int = 60) -> list[Plan]:
    """Plans (layer -> kept fraction) from least to most compressed; each keeps no more than the one before."""
    numels = {n: c.numel for n, c in sens.layers.items()}
    if not numels:
        return []
    grid = fine_keeps([k for c in sens.layers.values() for k in c.keeps])
    total = estimate_bytes(numels, dict.fromkeys(numels, 1.0), bits)
    plans: list[Plan] = []
    current = dict.fromkeys(numels, 1.0)
    for lam in np.geomspace(total * 10.0, total * 1e-5, lambdas):  # bytes per point of accuracy
        plan = {}
        for name, curve in sens.layers.items():
            cost = [estimate_layer_bytes(curve.numel, k, bits) + lam * 100.0 * curve.drop_at_keep(sens.baseline, k)
                    for k in grid]
            plan[name] = min(current[name], grid[int(np.argmin(cost))])
        if plan != current:
            plans.append(plan)
            current = plan
    return plans


def midpoint(a: Plan, b: Plan) -> Plan:
    """Per layer the geometric mean of two plans' kept fractions (half-way in log space)."""
    return {n: float(round(math.sqrt(a[n] * b[n]), 5)) for n in a}


def next_step(path: Sequence[Plan], numels: Mapping[str, int], start: int, factor: float, bits: int = 4) -> int:
    """Index of the first plan after ``start`` whose estimated bytes are at most ``factor`` x the start's."""
    if start + 1 >= len(path):
        return len(path)
    base = estimate_bytes(numels, path[start], bits) if start >= 0 else estimate_bytes(
        numels, dict.fromkeys(numels, 1.0), bits)
    for i in range(start + 1, len(path)):
        if estimate_bytes(numels, path[i], bits) <= factor * base:
            return i
    return len(path) - 1
