"""Integer execution backends: PyTorch x86/fbgemm quantized kernels and ONNX Runtime (QDQ, MLAS kernels).

``to_int8(model, calibration_data, backend="torch" | "onnxruntime")`` is the entry point.
"""

from deepshrink.quantize.backends.torch_int8 import Int8Model, integer_layers, is_integer_model, to_int8

__all__ = ["Int8Model", "integer_layers", "is_integer_model", "to_int8"]
