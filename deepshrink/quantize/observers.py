"""Activation observers: collect statistics during calibration and choose a clipping range ``[lo, hi]``.

min-max, moving-average min-max (EMA of per-batch extremes), percentile, MSE-optimal (grid search
over clipping ratios) and entropy (TensorRT's KL-divergence calibration on a 2048-bin histogram).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.core.registry import Registry
from deepshrink.quantize import primitives as P

OBSERVERS: Registry[type[Observer]] = Registry("observer")
MAX_SAMPLES = 1 << 20


class Observer:
    """Base: ``update`` with each calibration batch, then ``range()``."""

    def __init__(self, bits: int = 8, symmetric: bool = False) -> None:
        self.bits = P.check_bits(bits)
        self.symmetric = symmetric
        self.count = 0
        self.lo = math.inf
        self.hi = -math.inf

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        P.check_finite(x, "activation")
        self.count += 1
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def _check(self) -> None:
        if self.count == 0:
            raise DataError("observer saw no data: the calibration set is empty")

    def range(self) -> tuple[float, float]:
        self._check()
        return self.lo, self.hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.range()
        return P.qparams(torch.tensor(lo), torch.tensor(hi), self.bits, self.symmetric)


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """Global minimum and maximum of everything seen."""


@OBSERVERS.register("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch min and max: ``r <- r + c (r_batch - r)``."""

    def __init__(self, bits: int = 8, symmetric: bool = False, averaging_constant: float = 0.01) -> None:
        super().__init__(bits, symmetric)
        if not 0 < averaging_constant <= 1:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.c = averaging_constant

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        P.check_finite(x, "activation")
        lo, hi = float(x.min()), float(x.max())
        if self.count == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)
        self.count += 1


class _SampleObserver(Observer):
    """Keeps (a strided subsample of) the values seen, for range searches that need the distribution."""

    def __init__(self, bits: int = 8, symmetric: bool = False) -> None:
        super().__init__(bits, symmetric)
        self._samples: list[torch.Tensor] = []
        self._n = 0

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = x.detach().float().flatten()
        if flat.numel() == 0:
            return
        step = max(1, flat.numel() * (len(self._samples) + 1) // MAX_SAMPLES)
        self._samples.append(flat[::step].clone())
        self._n += self._samples[-1].numel()

    def samples(self) -> torch.Tensor:
        self._check()
        return torch.cat(self._samples)


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """Clip to the ``percentile`` and ``100 - percentile`` quantiles (99.99 by default)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, percentile: float = 99.99) -> None:
        super().__init__(bits, symmetric)
        if not 50 < percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        s = self.samples().double().numpy()
        q = self.percentile
        return float(np.percentile(s, 100 - q)), float(np.percentile(s, q))


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """Clipping range ``alpha * [min, max]`` minimising the mean squared quantization error."""

    def range(self) -> tuple[float, float]:
        s = self.samples().view(1, 1, -1)
        lo, hi = P.mse_ranges(s, self.bits, self.symmetric, steps=80)
        return float(lo), float(hi)


@OBSERVERS.register("entropy")
class EntropyObserver(_SampleObserver):
    """TensorRT entropy calibration: threshold ``T`` on |x| minimising KL(P || Q).

    Non-zero |x| is histogrammed into 2048 bins; for every candidate ``i >= 2^(bits-1)`` bins, ``P`` is the
    histogram clipped at bin ``i`` (the outliers added to the last bin) and ``Q`` is ``P`` merged
    into ``2^(bits-1)`` levels and expanded back over the non-empty bins.
    """

    BINS = 2048

    def range(self) -> tuple[float, float]:
        s = self.samples().double().numpy()
        # Exact zeros (e.g. ReLU outputs) are represented exactly by the zero point; left in, their spike
        # in the first bin makes KL favour the smallest threshold and crushes the rest of the range.
        mags = np.abs(s[s != 0])
        if mags.size == 0:
            return 0.0, 0.0
        t = kl_threshold(mags, float(mags.max()), self.BINS, 2 ** (self.bits - 1))
        lo = -t if float(s.min()) < 0 else 0.0
        return lo, t


def kl_threshold(values: np.ndarray, amax: float, bins: int, levels: int) -> float:
    """The |x| clipping threshold minimising KL divergence (TensorRT's algorithm)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best_kl, best_i = math.inf, bins
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = p > 0
        q = np.zeros(i)
        chunks = np.array_split(np.arange(i), levels)
        ref = hist[:i]
        for idx in chunks:
            nz = idx[ref[idx] > 0]
            if nz.size:
                q[nz] = ref[idx].sum() / nz.size
        if q[nonzero].min(initial=1.0) == 0:
            continue
        ps, qs = p / p.sum(), q / max(q.sum(), P.EPS)
        kl = float(np.sum(ps[nonzero] * np.log(ps[nonzero] / qs[nonzero])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def make_observer(name: str, bits: int = 8, symmetric: bool = False) -> Observer:
    """An observer by registry name (minmax, moving_average, percentile, mse, entropy)."""
    return OBSERVERS.get(name)(bits=bits, symmetric=symmetric)
