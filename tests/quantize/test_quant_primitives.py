"""Primitives: error bounds, per-channel / per-group scales, fixed point, pow2, binary, ternary, packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec.packing import pack_bits, unpack_bits
from deepshrink.core.errors import ConfigError
from deepshrink.quantize import primitives as P


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [False, True])
def test_nearest_error_at_most_half_scale(bits: int, symmetric: bool) -> None:
    if symmetric and bits == 1:
        with pytest.raises(ConfigError):
            P.qparams(torch.tensor(-1.0), torch.tensor(1.0), bits, symmetric)
        return
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(bits))
    w3 = P.grouped(w, "per_channel")
    lo, hi = P.minmax_ranges(w3)
    s, z = P.qparams(lo, hi, bits, symmetric)
    codes = P.quantize(w3, s, z, bits)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    err = (P.dequantize(codes, s, z) - w3).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-7).all())


@given(st.integers(2, 8), st.floats(0.01, 100), st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_affine_error_bound_property(bits: int, spread: float, seed: int) -> None:
    w = torch.randn(3, 1, 40, generator=torch.Generator().manual_seed(seed)) * spread + spread / 3
    s, z = P.qparams(*P.minmax_ranges(w), bits, False)
    err = (P.fake_quantize(w, s, z, bits) - w).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-6 * spread).all())


def test_zero_is_exact_and_per_channel_scales_follow_output_channels() -> None:
    w = torch.zeros(4, 3, 2, 2)
    for c in range(4):
        w[c] = torch.linspace(-1, 1, 12).view(3, 2, 2) * (c + 1)
    w3 = P.grouped(w, "per_channel")
    s, z = P.qparams(*P.minmax_ranges(w3), 8, True)
    assert s.shape == (4, 1, 1)
    assert torch.allclose(s.flatten(), torch.tensor([1.0, 2, 3, 4]) / 127)
    assert torch.equal(P.fake_quantize(torch.zeros(4, 1, 12), s, z, 8), torch.zeros(4, 1, 12))
    st_, _ = P.qparams(*P.minmax_ranges(P.grouped(w, "per_tensor")), 8, True)
    assert st_.shape == (1, 1, 1) and torch.isclose(st_.flatten()[0], torch.tensor(4 / 127))


def test_per_group_shapes_and_bad_group() -> None:
    w = torch.randn(5, 64)
    assert P.grouped(w, "per_group", 16).shape == (5, 4, 16)
    with pytest.raises(ConfigError):
        P.grouped(w, "per_group", 10)
    with pytest.raises(ConfigError):
        P.grouped(w, "per_row")  # type: ignore[arg-type]


def test_stochastic_rounding_is_unbiased() -> None:
    x = torch.full((200_000,), 0.3)
    r = P.round_values(x, "stochastic", torch.Generator().manual_seed(0))
    assert set(r.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(r.mean()) - 0.3) < 0.01


def test_fixed_point_is_round_times_power_of_two() -> None:
    w = torch.tensor([0.1, -0.26, 0.5, 3.0]).view(1, 1, 4)
    s, z = P.fixed_point_qparams(8, 4, w)
    out = P.fake_quantize(w, s, z, 8)
    assert torch.equal(out.flatten(), torch.tensor([2, -4, 8, 48]) / 16.0)
    big = P.fake_quantize(torch.tensor([100.0]).view(1, 1, 1), s, z, 8)
    assert float(big) == 127 / 16  # saturates at the signed 8-bit maximum


def test_pow2_binary_ternary_hand_values() -> None:
    w = torch.tensor([[0.8, -0.3, 0.05, -1.0]]).view(1, 1, 4)
    levels = P.pow2_levels(w, 3)  # 0, +-1, +-0.5, +-0.25
    out = P.lut_dequantize(P.pow2_codes(w, levels), levels)
    assert torch.allclose(out.flatten(), torch.tensor([1.0, -0.25, 0.0, -1.0]))
    codes, s, z = P.binary_params(w)
    alpha = (0.8 + 0.3 + 0.05 + 1.0) / 4
    assert torch.allclose(P.dequantize(codes, s, z).flatten(), torch.tensor([alpha, -alpha, alpha, -alpha]))
    codes, s, z = P.ternary_params(w, 0.7)  # delta = 0.37625: keeps 0.8 and -1.0
    assert torch.allclose(P.dequantize(codes, s, z).flatten(), torch.tensor([0.9, 0.0, 0.0, -0.9]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_pack_round_trip_every_width(bits: int) -> None:
    w = torch.randn(7, 1, 33, generator=torch.Generator().manual_seed(bits))
    s, z = P.qparams(*P.minmax_ranges(w), bits, False)
    codes = P.quantize(w, s, z, bits).numpy()
    data = pack_bits(codes, bits)
    assert len(data) == (codes.size * bits + 7) // 8
    assert np.array_equal(unpack_bits(data, bits, codes.size).astype(np.int64), codes.ravel())


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, True])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(ConfigError):
        P.check_bits(bits)


def test_sqnr() -> None:
    x = torch.ones(100)
    assert P.sqnr_db(x, x) == float("inf")
    assert abs(P.sqnr_db(x, x * 1.1) - 20.0) < 1e-4
