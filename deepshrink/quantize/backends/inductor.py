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

import dataclasses
import re
import shutil
import threading
import warnings
from collections.abc import Sequence
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

    deepshrink_runtime = "inductor"  # compiled code: no file form (see OrtModule)

    def __init__(self, compiled: Any, batch_size: int) -> None:
        super().__init__()
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no mode switching, no state_dict
        self.batch_size = batch_size
        self.training = False

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
                outs.append(_rows(self._compiled(chunk), n))
            return _cat(outs)


def _rows(out: Any, n: int) -> Any:
    """The first ``n`` rows of every tensor of a model output (a tensor, a tuple/list or a dict of them)."""
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, dict):
        return {k: _rows(v, n) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_rows(v, n) for v in out)
    return out


def _cat(outs: list[Any]) -> Any:
    """Chunk outputs joined along the batch, keeping their structure."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    if isinstance(first, dict):
        return {k: _cat([o[k] for o in outs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([o[i] for o in outs]) for i in range(len(first)))
    return first


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

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    _check_positive(batch_size=batch_size, threads=threads)
    shaped = torch.cat(batches)
    if len(shaped) < batch_size:  # repeat samples so the example has the compiled batch size
        shaped = shaped.repeat((batch_size + len(shaped) - 1) // len(shaped), *([1] * (shaped.dim() - 1)))
    chunks = [(c,) for c in shaped.split(batch_size) if len(c) == batch_size]
    compiled = compile_pt2e(model, chunks[0], chunks, reduce_range=reduce_range, threads=threads)
    return CompiledInt8(compiled, batch_size)


def _check_positive(**values: int | None) -> None:
    for what, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"inductor backend: {what} must be a positive integer, got {value!r}")


def compile_pt2e(model: nn.Module, example: tuple[torch.Tensor, ...],
                 calibration: Sequence[tuple[torch.Tensor, ...]] = (), *, dynamic: bool = False,
                 reduce_range: bool = False, weight_bits: int = 8, skip: Sequence[str] = (),
                 threads: int | None = None) -> Any:
    """Export ``model`` at ``example``'s shapes, annotate it with the X86 quantizer (modules named in
    ``skip`` stay float), calibrate on ``calibration`` (static activations) or quantize activations per
    call (``dynamic``), convert and compile with freezing (done here, on one call with ``example``).

    ``weight_bits`` 7 keeps per-channel weights in [-64, 63]: with full 8-bit activations AVX2's
    int16 pair sums cannot saturate either. Returns the compiled callable (static shapes).
    """
    _check_positive(threads=threads)
    if weight_bits not in (7, 8):
        raise ConfigError(f"inductor backend: weight_bits must be 7 or 8, got {weight_bits!r}")
    xiq, prepare_pt2e, convert_pt2e = _needs()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(model, tuple(example)).module()
        except Exception as exc:  # export raises many types for untraceable models
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"torch.export cannot trace {type(model).__name__} for the inductor backend: "
                             f"{first}") from None
        config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic, reduce_range=reduce_range)
        if weight_bits < 8:
            lim = 2 ** (weight_bits - 1)
            config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-lim,
                                                                            quant_max=lim - 1))
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(config)
        for name in skip:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch)
        return compile_frozen(convert_pt2e(prepared), example, threads)


def compile_frozen(module: nn.Module, example: tuple[torch.Tensor, ...], threads: int | None, *,
                   dynamic: bool | None = None) -> Any:
    """``torch.compile(module)``, compiled now by one call with ``example`` under weight freezing (which folds
    the weights into prepacked oneDNN int8 kernels; it must be on when compiling) at ``threads`` OpenMP threads
    (fixed into the generated code; default the current count). ``dynamic=False``: every new input shape is
    a separate static graph (compile each with ``warm_frozen``)."""
    compiled = torch.compile(module, dynamic=dynamic)
    warm_frozen(compiled, example, threads)
    return compiled


def warm_frozen(compiled: Any, example: tuple[torch.Tensor, ...], threads: int | None) -> None:
    """Compile ``compiled`` (a ``torch.compile`` callable) for ``example``'s shapes now, with weight freezing and
    ``threads`` kernel threads; Dynamo's per-function recompile limit is raised to at least 64 for the call, so
    several shapes (and several models of one class: with freezing, Dynamo guards on each model's parameters)
    each keep their own frozen graph."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    previous = None

    def save(code: str) -> None:
        codes.append(code)
        if previous is not None:
            previous(code)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    limit = max(int(dynamo_config.recompile_limit), 64)
    with _CAPTURE:  # one class-wide hook: two threads compiling at once would each restore the other's
        previous = GraphLowering.save_output_code  # a caller's own capture (tests) keeps working
        GraphLowering.save_output_code = save  # Inductor's hook for its output code, fresh or from its cache
        try:
            with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=limit), \
                    torch.inference_mode():
                compiled(*example)
        finally:
            GraphLowering.save_output_code = previous
            torch.set_num_threads(old_threads)
    check_int8_code(codes)


# integer GEMMs in Inductor's generated code, Python or C++ wrapper: oneDNN's int8 linear / convolution
# (``onednn.qlinear_pointwise``, ``aoti_torch_cpu__qconv_pointwise_tensor``), aten's int8 x int8 -> int32 mm
# (``_int_mm``, ``_int_mm_out``) and int8-weight mm
INT8_KERNEL = re.compile(r"q(?:linear|conv)\w*_pointwise|_int_mm|_weight_int8pack_mm")
_CAPTURE = threading.Lock()


def check_int8_code(codes: Sequence[str]) -> None:
    """ModelError when Inductor generated code (``codes``: its output modules) without a single integer kernel.

    Lowering int8 is pattern matching inside Inductor; when it fails (seen with torch 2.11 and torchao 0.17 or
    0.18 on a GPU machine) the compile succeeds and every layer silently runs fp32 math. Not checked: a call
    that captured no code (Dynamo had the graph already), and a partial lowering (one integer kernel is
    enough to pass)."""
    if codes and not any(INT8_KERNEL.search(code) for code in codes):
        import importlib.metadata as md

        try:
            ao = md.version("torchao")
        except md.PackageNotFoundError:
            ao = "not installed"
        raise ModelError(f"Inductor lowered no int8 kernel (torch {torch.__version__}, torchao {ao}): the "
                         "compiled model would run fp32 math; the tested pair is torch 2.13 + torchao 0.18, "
                         "or use backend='onnxruntime'")


__all__ = ["INDUCTOR_KERNEL_TYPES", "INT8_KERNEL", "CompiledInt8", "check_int8_code", "compile_frozen", "compile_pt2e",
           "to_inductor", "warm_frozen"]
