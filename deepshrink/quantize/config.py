"""One frozen, validated config per quantization scheme, plus the layer selector they share.

Selection: ``layers`` is a regex matched (``re.fullmatch``) against module names, ``types`` the layer
types to quantize (Linear and Conv1d/2d/3d by default). ``overrides`` maps a regex to another config
for the layers it matches (mixed precision); the first matching override wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.quantize.observers import OBSERVERS
from deepshrink.quantize.primitives import check_bits

DEFAULT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")


@dataclass(frozen=True)
class QuantConfig:
    """Fields every scheme shares: which layers, and per-layer overrides."""

    layers: str = ".*"
    types: tuple[str, ...] = DEFAULT_TYPES
    overrides: tuple[tuple[str, QuantConfig], ...] = ()

    def __post_init__(self) -> None:
        try:
            re.compile(self.layers)
        except re.error as exc:
            raise ConfigError(f"layers: invalid regex {self.layers!r}: {exc}") from None
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))
        object.__setattr__(self, "types", tuple(self.types))
        ov = self.overrides
        if isinstance(ov, Mapping):
            ov = tuple(ov.items())
        ov = tuple(tuple(item) for item in ov)
        for item in ov:
            if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], QuantConfig):
                raise ConfigError("overrides must map a layer-name regex to a QuantConfig")
            try:
                re.compile(item[0])
            except re.error as exc:
                raise ConfigError(f"overrides: invalid regex {item[0]!r}: {exc}") from None
        object.__setattr__(self, "overrides", ov)

    def selects(self, name: str, module: nn.Module) -> bool:
        # The MRO also covers parametrized classes (``ParametrizedLinear``) and subclasses of a type.
        kinds = {k.__name__ for k in type(module).__mro__}
        return bool(kinds & set(self.types)) and re.fullmatch(self.layers, name) is not None

    def for_layer(self, name: str) -> QuantConfig | None:
        """The config that applies to ``name`` (an override, or self); None when an override skips it."""
        for pattern, cfg in self.overrides:
            if re.fullmatch(pattern, name):
                return cfg
        return self


@dataclass(frozen=True)
class SkipConfig(QuantConfig):
    """Use as an override to leave the matched layers in float."""


def _granularity(g: str, group_size: int) -> None:
    if g not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {g!r}")
    if g == "per_group" and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")


@dataclass(frozen=True)
class IntWeightConfig(QuantConfig):
    """Weight-only uniform quantization, 1-8 bits; ``weight_observer`` is minmax or mse."""

    bits: int = 8
    granularity: str = "per_channel"
    group_size: int = 128
    symmetric: bool = True
    rounding: str = "nearest"
    weight_observer: str = "minmax"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits)
        _granularity(self.granularity, self.group_size)
        if self.symmetric and self.bits < 2:
            raise ConfigError("symmetric quantization needs >= 2 bits; use BinaryConfig or symmetric=False")
        if self.rounding not in ("nearest", "stochastic"):
            raise ConfigError(f"rounding must be nearest or stochastic, got {self.rounding!r}")
        if self.weight_observer not in ("minmax", "mse"):
            raise ConfigError(f"weight_observer must be minmax or mse, got {self.weight_observer!r}")


@dataclass(frozen=True)
class FixedPointConfig(QuantConfig):
    """Fixed point weights ``round(w * 2^frac_bits)`` as signed ``bits``-bit integers."""

    bits: int = 8
    frac_bits: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 2)
        fb = self.frac_bits
        if isinstance(fb, bool) or not isinstance(fb, int) or not -16 <= fb <= 31:
            raise ConfigError(f"frac_bits must be an integer in -16..31, got {self.frac_bits!r}")


@dataclass(frozen=True)
class PowerOfTwoConfig(QuantConfig):
    """Logarithmic weights: 0 and ``+-max|w| * 2^-k`` per channel, ``bits`` in 2..8."""

    bits: int = 4
    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 2)
        _granularity(self.granularity, 1)
        if self.granularity == "per_group":
            raise ConfigError("power-of-two supports per_tensor or per_channel")


@dataclass(frozen=True)
class KMeansConfig(QuantConfig):
    """Non-linear quantization: a k-means codebook of ``2^bits`` values per layer (zeros stay zero)."""

    bits: int = 4
    init: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits)
        if self.init not in ("linear", "density", "random"):
            raise ConfigError(f"k-means init must be linear, density or random, got {self.init!r}")


def _sign_scheme(granularity: str, trainable: bool, what: str) -> None:
    """Checks shared by the binary and ternary configs: one scale per tensor or channel, a bool switch."""
    _granularity(granularity, 1)
    if granularity == "per_group":
        raise ConfigError(f"{what} weights support per_tensor or per_channel")
    if not isinstance(trainable, bool):
        raise ConfigError(f"trainable must be a bool, got {trainable!r}")


@dataclass(frozen=True)
class BinaryConfig(QuantConfig):
    """Binary weights ``alpha * sign(w)``, ``alpha = mean |w|`` per channel (or per tensor).

    ``trainable=True`` attaches a straight-through fake quantizer for BinaryConnect-style training
    (train, then ``freeze``) instead of frozen codes."""

    granularity: str = "per_channel"
    trainable: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _sign_scheme(self.granularity, self.trainable, "binary")


@dataclass(frozen=True)
class TernaryConfig(QuantConfig):
    """Ternary weights (TWN): ``delta = threshold * mean |w|``, closed-form ``alpha``; ``trainable=True``
    for quantization-aware training with the straight-through estimator."""

    threshold: float = 0.7
    granularity: str = "per_channel"
    trainable: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _sign_scheme(self.granularity, self.trainable, "ternary")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold < 10:
            raise ConfigError(f"ternary threshold must be a number in [0, 10), got {self.threshold!r}")


@dataclass(frozen=True)
class StaticConfig(QuantConfig):
    """Weights and activations (the input of each selected layer) with calibrated observers."""

    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "per_channel"
    group_size: int = 128
    observer: str = "minmax"
    act_symmetric: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.weight_bits, 2, what="weight_bits")
        check_bits(self.act_bits, 2, what="act_bits")
        _granularity(self.granularity, self.group_size)
        if self.observer not in OBSERVERS:
            choices = ", ".join(OBSERVERS.names())
            raise ConfigError(f"unknown observer {self.observer!r}; choose one of: {choices}")


@dataclass(frozen=True)
class Int8StaticConfig(StaticConfig):
    """8-bit weights (symmetric per channel) and 8-bit activations (affine per tensor), calibrated."""


@dataclass(frozen=True)
class Int8DynamicConfig(QuantConfig):
    """8-bit weights; activations quantized per call from their own min/max (no calibration)."""

    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        super().__post_init__()
        _granularity(self.granularity, 128)


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """Trainable fake quantization (STE): weights at ``weight_bits``, activations at ``act_bits``
    (None: weights only). ``lsq`` learns the weight step size (Esser et al. 2020)."""

    weight_bits: int = 4
    act_bits: int | None = None
    granularity: str = "per_channel"
    group_size: int = 128
    lsq: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.weight_bits, 2, what="weight_bits")
        if self.act_bits is not None:
            check_bits(self.act_bits, 2, what="act_bits")
        _granularity(self.granularity, self.group_size)
        if self.lsq and self.granularity == "per_group":
            raise ConfigError("LSQ supports per_tensor or per_channel step sizes")
