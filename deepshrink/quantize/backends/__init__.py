"""Integer execution backends (PyTorch x86/fbgemm quantized kernels)."""

from deepshrink.quantize.backends.torch_int8 import Int8Model, integer_layers, is_integer_model, to_int8

__all__ = ["Int8Model", "integer_layers", "is_integer_model", "to_int8"]
