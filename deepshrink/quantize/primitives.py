"""Quantization primitives: uniform affine/symmetric (1-8 bits, per tensor/channel/group), fixed point,
power-of-two, binary and ternary.

Every scheme produces unsigned integer *codes* ``u`` in ``0 .. 2^bits - 1`` and the parameters that
map them back to floats, so one packed storage format serves all of them:

* uniform: ``w_hat = (u - zero_point) * scale`` (symmetric: ``zero_point = 2^(bits-1)``);
* binary: ``u in {0, 1}``, ``scale = 2 alpha``, ``zero_point = 0.5``  ->  ``w_hat = +-alpha``;
* ternary: ``u in {0, 1, 2}``, ``scale = alpha``, ``zero_point = 1``  ->  ``w_hat in {-alpha, 0, alpha}``;
* power-of-two: a lookup table per channel (``levels[c, u]``).

Scales and zero points have shape ``(C, G, 1)`` and broadcast against the weight viewed as
``(C, G, K)``: ``C = 1, G = 1`` per tensor, ``G = 1`` per channel (dim 0), ``G > 1`` per group of
``K`` consecutive inputs of a channel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from deepshrink.core.errors import ConfigError, ModelError

Granularity = Literal["per_tensor", "per_channel", "per_group"]
Rounding = Literal["nearest", "stochastic"]

EPS = 1e-12


def check_bits(bits: object, low: int = 1, high: int = 8, what: str = "bits") -> int:
    """``bits`` as an int in ``low..high`` or a ConfigError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ConfigError(f"{what} must be an integer in {low}..{high}, got {bits!r}")
    return bits


def check_finite(t: torch.Tensor, where: str) -> None:
    """ModelError when ``t`` holds NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        raise ModelError(f"{where}: contains NaN or inf; cannot quantize")


def grouped(w: torch.Tensor, granularity: Granularity, group_size: int = 128) -> torch.Tensor:
    """View ``w`` as ``(C, G, K)`` for the given granularity (channel = dim 0)."""
    if granularity == "per_tensor" or w.dim() == 0:
        return w.reshape(1, 1, -1)
    rows = w.reshape(w.shape[0], -1)
    if granularity == "per_channel":
        return rows.unsqueeze(1)
    if granularity == "per_group":
        k = rows.shape[1]
        if group_size < 1 or k % group_size:
            raise ConfigError(f"per_group: {k} inputs per channel are not a multiple of group_size {group_size}")
        return rows.reshape(rows.shape[0], k // group_size, group_size)
    raise ConfigError(f"granularity must be per_tensor, per_channel or per_group, got {granularity!r}")


def round_values(x: torch.Tensor, rounding: Rounding, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to nearest (ties to even) or stochastically (up with probability equal to the fraction)."""
    if rounding == "nearest":
        return torch.round(x)
    if rounding == "stochastic":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return torch.floor(x + noise)
    raise ConfigError(f"rounding must be nearest or stochastic, got {rounding!r}")


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering ``[lo, hi]`` (widened to include 0) with unsigned codes of ``bits`` bits.

    Symmetric: ``scale = max(|lo|, |hi|) / (2^(bits-1) - 1)``, zero point ``2^(bits-1)``. Affine:
    ``scale = (hi - lo) / (2^bits - 1)``, integer zero point ``round(-lo / scale)``, so 0 is exact.
    """
    check_bits(bits)
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if symmetric:
        if bits < 2:
            raise ConfigError("symmetric quantization needs >= 2 bits; use BinaryConfig or symmetric=False")
        half = 2 ** (bits - 1)
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / (half - 1), min=EPS)
        return scale, torch.full_like(scale, float(half))
    qmax = 2**bits - 1
    scale = torch.clamp((hi - lo) / qmax, min=EPS)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
             rounding: Rounding = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """Unsigned codes ``clamp(round(x / scale) + zero_point, 0, 2^bits - 1)`` (int64)."""
    q = round_values(x / scale, rounding, generator) + zero_point
    return torch.clamp(q, 0, 2**bits - 1).to(torch.int64)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``(codes - zero_point) * scale`` in float32: the single formula every path uses (bitwise equal)."""
    return (codes.to(torch.float32) - zero_point) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with round-to-nearest, in float (no gradient trickery; see ``qat`` for STE)."""
    return dequantize(quantize(x, scale, zero_point, bits), scale, zero_point)


def minmax_ranges(w3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max of a ``(C, G, K)`` view, shaped ``(C, G, 1)``."""
    return w3.amin(dim=2, keepdim=True), w3.amax(dim=2, keepdim=True)


def mse_ranges(w3: torch.Tensor, bits: int, symmetric: bool, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping range minimising the quantization MSE over ``alpha * [min, max]``, alpha in (0.2, 1]."""
    lo, hi = minmax_ranges(w3)
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for alpha in torch.linspace(1.0, 0.2, steps).tolist():
        s, z = qparams(lo * alpha, hi * alpha, bits, symmetric)
        err = ((fake_quantize(w3, s, z, bits) - w3) ** 2).sum(dim=2, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo * alpha, best_lo)
        best_hi = torch.where(better, hi * alpha, best_hi)
    return best_lo, best_hi


def fixed_point_qparams(bits: int, frac_bits: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed point ``round(w * 2^p)`` as signed ``bits``-bit ints: scale ``2^-p``, zero point ``2^(bits-1)``."""
    check_bits(bits, 2)
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not -16 <= frac_bits <= 31:
        raise ConfigError(f"fixed point frac_bits must be an integer in -16..31, got {frac_bits!r}")
    scale = torch.full((1, 1, 1), 2.0**-frac_bits, dtype=torch.float32, device=like.device)
    return scale, torch.full_like(scale, float(2 ** (bits - 1)))


def binary_params(w3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BinaryConnect / XNOR: codes ``w >= 0``, ``alpha = mean |w|`` per row; returns (codes, scale, zp)."""
    alpha = torch.clamp(w3.abs().mean(dim=2, keepdim=True), min=EPS)
    codes = (w3 >= 0).to(torch.int64)
    return codes, 2 * alpha, torch.full_like(alpha, 0.5)


def ternary_params(w3: torch.Tensor, threshold: float = 0.7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWN: ``delta = threshold * mean |w|``, ``alpha = mean |w|`` over ``|w| > delta`` (closed form)."""
    a = w3.abs()
    delta = threshold * a.mean(dim=2, keepdim=True)
    keep = a > delta
    count = keep.sum(dim=2, keepdim=True).clamp(min=1)
    alpha = torch.clamp((a * keep).sum(dim=2, keepdim=True) / count, min=EPS)
    codes = torch.where(keep, torch.sign(w3), torch.zeros_like(w3)).to(torch.int64) + 1
    return codes, alpha, torch.ones_like(alpha)


def pow2_levels(w3: torch.Tensor, bits: int) -> torch.Tensor:
    """Power-of-two levels per row: ``0`` and ``+-m * 2^-k``, ``k = 0 .. 2^(bits-1) - 2``, ``m = max |w|``.

    Code layout: ``0`` is zero, ``1..n`` positive (largest first), ``n+1..2n`` negative, ``2n + 1``
    (a free slot) repeats zero. Shape ``(C, G, 2^bits)``.
    """
    check_bits(bits, 2)
    return pow2_table(torch.clamp(w3.abs().amax(dim=2, keepdim=True), min=EPS), bits)


def pow2_table(m: torch.Tensor, bits: int) -> torch.Tensor:
    """The ``pow2_levels`` table of each row's largest magnitude ``m`` (``(C, G, 1)``): the whole table follows
    from ``m`` (scaling by a power of two is exact), so an artifact stores ``m`` alone."""
    n = 2 ** (bits - 1) - 1
    mags = m * torch.pow(2.0, -torch.arange(n, dtype=torch.float32, device=m.device))
    zero = torch.zeros_like(m)
    return torch.cat([zero, mags, -mags, zero], dim=2)


def pow2_codes(w3: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest level (in the linear domain) for every value of ``w3`` given per-row ``levels``."""
    dist = (w3.unsqueeze(-1) - levels.unsqueeze(2)).abs()
    return dist.argmin(dim=-1)


def lut_dequantize(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``levels[c, g, codes[c, g, k]]`` for codes shaped ``(C, G, K)``."""
    return torch.gather(levels, 2, codes)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|x|^2 / |x - x_hat|^2)`` in dB."""
    noise = float(((reference.double() - approx.double()) ** 2).sum())
    signal = float((reference.double() ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * math.log10(signal / noise)
