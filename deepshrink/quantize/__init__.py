"""Quantization: uniform, fixed point, power-of-two, k-means, binary and ternary weights; calibrated and
dynamic activations; QAT (STE, LSQ); batch-norm folding; real int8 kernels. Entry point: ``quantize``."""

from deepshrink.quantize.config import (
    BinaryConfig,
    FixedPointConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    IntWeightConfig,
    KMeansConfig,
    PowerOfTwoConfig,
    QATConfig,
    QuantConfig,
    SkipConfig,
    StaticConfig,
    TernaryConfig,
)
from deepshrink.quantize.fold import fold_batchnorm
from deepshrink.quantize.mixed import choose_bits, sensitivity_scan
from deepshrink.quantize.modules import without_input_quantizers
from deepshrink.quantize.ptq import calibrate, quantize, register_handler, selected_layers
from deepshrink.quantize.qat import freeze

__all__ = [
    "BinaryConfig", "FixedPointConfig", "Int8DynamicConfig", "Int8StaticConfig", "IntWeightConfig",
    "KMeansConfig", "PowerOfTwoConfig", "QATConfig", "QuantConfig", "SkipConfig", "StaticConfig",
    "TernaryConfig", "calibrate", "choose_bits", "sensitivity_scan",
    "fold_batchnorm", "freeze", "quantize", "register_handler", "selected_layers", "without_input_quantizers",
]
