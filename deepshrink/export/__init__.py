"""Export compressed models for deployment: ONNX, TorchScript, safetensors, or the pickle-free artifact.

``export_model(model, path, format, example_inputs)`` writes atomically and returns the path;
``check_onnx(model, path, example_inputs)`` runs the ONNX file with ONNX Runtime and fails loudly when
its outputs leave the tolerance. See docs/export.md.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DeepShrinkError, ModelError
from deepshrink.artifact.model_io import some, torch_int8_layers
from deepshrink.core.fileio import atomic_write_bytes
from deepshrink.export.onnx import (
    _as_tuple, _first_line, check_onnx, export_onnx, ort_session, passing_trace_warnings, run_onnx,
)

Format = Literal["onnx", "torchscript", "safetensors", "deepshrink"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors", "deepshrink")

__all__ = ["FORMATS", "Format", "check_onnx", "export_model", "ort_session", "run_onnx"]


def _unwrap(model: Any) -> nn.Module:
    """The ``nn.Module`` inside (``Int8Model`` and similar wrappers carry it as ``.model``)."""
    inner = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(inner, nn.Module):
        raise ModelError(f"cannot export {type(model).__name__}: not a torch nn.Module")
    return inner


def _name(model: nn.Module) -> str:
    try:
        arch = getattr(model, "_deepshrink_arch", None)
    except DeepShrinkError:
        arch = None
    return arch["zoo"] if isinstance(arch, dict) and "zoo" in arch else type(model).__name__


def export_model(model: nn.Module, path: str | os.PathLike[str], format: Format,
                 example_inputs: tuple[torch.Tensor, ...] | None = None, *, opset: int | None = None,
                 dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    """Write ``model`` to ``path`` in ``format``; returns the path.

    ``onnx`` and ``torchscript`` trace the model on ``example_inputs`` (required), with the batch
    dimension dynamic unless ``dynamic_axes`` says otherwise (ONNX only); ``safetensors`` stores the
    effective weights by plain name (parametrizations applied); ``deepshrink`` writes the pickle-free
    artifact (``deepshrink.save``, or ``save_quantized`` when weights carry frozen integer codes). The
    model is exported in eval mode and left in the mode it had.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    module = _unwrap(model)
    what = _name(module)
    target = Path(path)
    if not str(target.parent) or not target.parent.is_dir():
        raise ConfigError(f"cannot export {what} to {target}: folder {target.parent} does not exist")
    if opset is not None and format != "onnx":
        raise ConfigError(f"opset applies to ONNX only, not {format}")
    inputs = None if example_inputs is None else _as_tuple(example_inputs)
    if format in ("onnx", "torchscript") and inputs is None:
        raise ConfigError(f"exporting {what} to {format} traces the model: example_inputs are required")
    runtime = getattr(module, "deepshrink_runtime", None)
    if runtime == "onnxruntime" and format == "onnx":
        atomic_write_bytes(target, module.model_bytes)  # the int8 graph the module runs, as it is
        return target
    if runtime is not None:
        from deepshrink.artifact.model_io import RUNTIME_REFUSALS

        raise ModelError(f"cannot export {what} to {format}: "
                         f"{RUNTIME_REFUSALS.get(runtime, 'it is a runtime module without tensors')}")
    int8 = torch_int8_layers(module)
    if int8 and format != "torchscript":
        raise ModelError(f"cannot export {what} to {format}: {len(int8)} layers ({some(int8)}) run "
                         "torch int8 kernels with packed weights that have no ONNX/plain-tensor form; export "
                         "the float or fake-quant model (ONNX Runtime quantizes it) or use format 'torchscript'")
    was_training = module.training
    module.eval()
    try:
        if format == "onnx":
            export_onnx(module, target, inputs, opset=opset, dynamic_axes=dynamic_axes, what=what)
        elif format == "torchscript":
            atomic_write_bytes(target, _torchscript_bytes(_traceable(module, what), inputs, what))
        elif format == "safetensors":
            atomic_write_bytes(target, _safetensors_bytes(module, what))
        else:
            _save_artifact(module, target, what)
    finally:
        module.train(was_training)
    return target


def _traceable(module: nn.Module, what: str) -> nn.Module:
    """What TorchScript can trace: QAT weight quantizers (straight-through autograd functions) frozen to their
    integer codes on a copy, as the artifact stores them; activation fake-quantization is refused."""
    from deepshrink.quantize.modules import input_quantizers
    from deepshrink.quantize.qat import TRAINABLE, freeze

    acts = input_quantizers(module)
    if acts:
        raise ModelError(f"cannot export {what} to TorchScript: {len(acts)} layers ({some(list(acts))}) "
                         "fake-quantize their inputs with straight-through functions TorchScript cannot trace; "
                         "export ONNX, or convert for integer execution with to_int8")
    if any(isinstance(m, TRAINABLE) for m in module.modules()):
        module = freeze(copy.deepcopy(module)).eval()
    return module


def _torchscript_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> bytes:
    buf = io.BytesIO()
    try:
        with passing_trace_warnings(f"TorchScript export of {what}"), torch.no_grad():
            traced = torch.jit.trace(model, inputs, strict=False, check_trace=False)
            torch.jit.save(traced, buf)
    except Exception as exc:  # noqa: BLE001 - the tracer raises many types; one line for the user
        raise ModelError(f"cannot export {what} to TorchScript: {_first_line(exc)}") from None
    return buf.getvalue()


def _safetensors_bytes(model: nn.Module, what: str) -> bytes:
    from safetensors.torch import save as st_save

    from deepshrink.artifact.model_io import plain_state

    state: dict[str, torch.Tensor] = {}
    for name, (t, _) in plain_state(model).items():
        state[name] = t.detach().cpu().contiguous().clone()
    if not state:
        raise ModelError(f"cannot export {what} to safetensors: it has no tensors")
    return st_save(state, metadata={"format": "pt", "model": what})


def _save_artifact(model: nn.Module, target: Path, what: str) -> None:
    from deepshrink.artifact.model_io import save

    save(model, target)  # quantized weights (frozen or QAT) as their integer codes
