"""Fixed-width bit packing: round trips at every width, MSB-first layout, input checking."""

from __future__ import annotations

import numpy as np
import pytest

from deepshrink.codec.packing import pack_bits, packed_nbytes, unpack_bits
from deepshrink.core.errors import ConfigError, CorruptArtifactError


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 1001])
def test_round_trip_every_width(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 1000 + count)
    values = rng.integers(0, 1 << bits, size=count)
    if count:
        values[0] = (1 << bits) - 1  # exercise the top value of the range
    data = pack_bits(values, bits)
    assert len(data) == packed_nbytes(count, bits) == (count * bits + 7) // 8
    out = unpack_bits(data, bits, count)
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(out, values)


def test_msb_first_layout_and_zero_padding() -> None:
    # 001 010 011 -> 00101001 1(0000000)
    assert pack_bits(np.array([1, 2, 3]), 3) == bytes([0x29, 0x80])
    assert pack_bits(np.array([0x1ABC]), 13) == bytes([0b11010101, 0b11100000])
    assert pack_bits(np.array([0xBEEF]), 16) == b"\xbe\xef"


@pytest.mark.parametrize("bits", [1, 5, 8, 12, 16])
def test_out_of_range_values_rejected(bits: int) -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        pack_bits(np.array([0, 1 << bits]), bits)
    with pytest.raises(ConfigError, match="does not fit"):
        pack_bits(np.array([-1, 0]), bits)


@pytest.mark.parametrize("bits", [0, 17, -3, 2.0, True])
def test_bad_width_rejected(bits: object) -> None:
    with pytest.raises(ConfigError, match="bit width"):
        pack_bits(np.array([0]), bits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bit width"):
        unpack_bits(b"\x00", bits, 1)  # type: ignore[arg-type]


def test_non_integer_values_rejected() -> None:
    with pytest.raises(ConfigError, match="integer"):
        pack_bits(np.array([0.5, 1.0]), 4)


def test_short_data_is_corrupt_and_extra_bytes_ignored() -> None:
    data = pack_bits(np.arange(10), 4)
    with pytest.raises(CorruptArtifactError, match="too short"):
        unpack_bits(data[:-1], 4, 10)
    np.testing.assert_array_equal(unpack_bits(data + b"\xff", 4, 10), np.arange(10))
    with pytest.raises(ConfigError):
        unpack_bits(data, 4, -1)
