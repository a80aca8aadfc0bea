"""Integer execution backends: PyTorch x86/fbgemm quantized kernels, ONNX Runtime (QDQ, MLAS kernels) and
Inductor (torch.export + torchao's X86InductorQuantizer, oneDNN int8 kernels).

``to_int8(model, calibration_data, backend="torch" | "onnxruntime" | "inductor")`` is the entry point.
"""

from deepshrink.quantize.backends.torch_int8 import Int8Model, integer_layers, is_integer_model, to_int8

__all__ = ["Int8Model", "integer_layers", "is_integer_model", "to_int8"]
