"""Real int8 execution through PyTorch 2's export + Inductor path (torchao pt2e, X86InductorQuantizer).

The model is exported with ``torch.export`` for one batch size (static shapes), annotated by torchao's
``X86InductorQuantizer`` (uint8 activations with a histogram observer, per-channel symmetric int8
weights; per-tensor weights are not offered), calibrated, converted to quantize/dequantize patterns and compiled by Inductor with
weight freezing, which lowers the patterns to oneDNN's int8 convolution and linear kernels fused
with their ReLU and requantization. This replaces ``torch.ao.quantization``'s FX path, deprecated in
favour of torchao. Needs the ``torchao`` package and a C++ compiler (Inductor generates and builds
C++ once, at conversion: about 10 s for LeNet-5).
"""

from __future__ import annotations

import shutil
import warnings
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError

# weighted layers the X86 quantizer turns into oneDNN int8 kernels
INDUCTOR_KERNEL_TYPES = (nn.Linear, nn.Conv2d)


class CompiledInt8(nn.Module):
    """An ``nn.Module`` face for the compiled graph, built for one batch size: a batch of another size is
    cut into chunks of that size (the last one zero-padded, its padding rows dropped from the output).
    ``eval()`` leaves the exported graph alone (torch.export modules refuse mode switches)."""

    def __init__(self, compiled: Any, batch_size: int) -> None:
        super().__init__()
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no mode switching, no state_dict
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> CompiledInt8:
        if mode:
            raise ModelError("an Inductor int8 model is for inference only; fine-tune the float model instead")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch_size
        # always inference mode, as when compiled: another grad mode would make Dynamo recompile the graph,
        # without the freezing that turns it into int8 kernels
        with torch.inference_mode():
            if len(x) == b:
                return self._compiled(x)
            outs = []
            for chunk in x.split(b):
                n = len(chunk)
                if n < b:
                    chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
                outs.append(self._compiled(chunk)[:n])
            return torch.cat(outs)


def _needs() -> tuple[Any, Any, Any]:
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise ConfigError("int8 backend 'inductor' needs torchao (pip install 'deepshrink[inductor]'); "
                          f"import failed: {exc}") from None
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise ConfigError("int8 backend 'inductor' needs a C++ compiler (g++) on PATH: Inductor compiles the "
                          "int8 kernels' glue code; use backend='onnxruntime' or 'torch' without one")
    return xiq, prepare_pt2e, convert_pt2e


def to_inductor(model: nn.Module, batches: list[torch.Tensor], *, batch_size: int = 64,
                reduce_range: bool | None = None, threads: int | None = None) -> CompiledInt8:
    """Export, quantize (calibrating on ``batches``) and compile ``model`` (a plain float copy, eval mode).

    ``batch_size``: the batch the graph is exported and compiled for (Inductor's int8 convolution
    lowering needs static shapes here; other sizes are chunked and padded). ``reduce_range``: 7-bit
    activations, so AVX2's ``vpmaddubsw`` (u8 x s8 pairs summed into int16) cannot saturate; None = on
    when the CPU has no VNNI (torchao's advice for such CPUs). ``threads``: the generated kernels' OpenMP
    thread count, fixed at compile time (default: ``torch.get_num_threads()`` now).
    """
    from deepshrink.quantize.backends.onnxruntime import cpu_has_vnni

    for what, value in (("batch_size", batch_size), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"inductor backend: {what} must be a positive integer, got {value!r}")
    xiq, prepare_pt2e, convert_pt2e = _needs()
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    shaped = torch.cat(batches)
    if len(shaped) < batch_size:  # repeat samples so the example has the compiled batch size
        shaped = shaped.repeat((batch_size + len(shaped) - 1) // len(shaped), *([1] * (shaped.dim() - 1)))
    chunks = [c for c in shaped.split(batch_size) if len(c) == batch_size]
    import torch._inductor.config as inductor_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(model, (chunks[0],)).module()
        except Exception as exc:  # export raises many types for untraceable models
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"torch.export cannot trace {type(model).__name__} for the inductor backend: "
                             f"{first}") from None
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for c in chunks:
                prepared(c)
        compiled = torch.compile(convert_pt2e(prepared))
        # freezing folds the weights into prepacked oneDNN int8 kernels; it must be on when compiling,
        # which happens here, on the first call (the input shape never changes afterwards)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads or old_threads)
        try:
            with inductor_config.patch(freezing=True), torch.inference_mode():
                compiled(chunks[0])
        finally:
            torch.set_num_threads(old_threads)
    return CompiledInt8(compiled, batch_size)


__all__ = ["INDUCTOR_KERNEL_TYPES", "CompiledInt8", "to_inductor"]
