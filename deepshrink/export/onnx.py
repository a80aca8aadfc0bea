"""ONNX export through torch's TorchScript-based exporter, and a check with ONNX Runtime.

torch 2.13 defaults to the dynamo exporter, which needs ``onnxscript`` (not a dependency here and not
installable offline), so deepshrink uses ``dynamo=False``. Parametrized weights (pruning masks,
frozen ``QuantizedWeight`` codes) are evaluated at trace time and constant-folded: the ONNX graph
holds the effective fp32 weights. PyTorch's own int8 modules (``torch.ao`` quantized/packed kernels)
have no ONNX lowering in this exporter; export the fake-quant model and let ONNX Runtime quantize.
"""

from __future__ import annotations

import contextlib

import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DeepShrinkError, ModelError
from deepshrink.core.fileio import atomic_write_bytes

DEFAULT_OPSET = 17



@contextlib.contextmanager
def passing_trace_warnings(what: str) -> Iterator[None]:
    """Silence the exporters' chatter, but hand torch's TracerWarnings to the caller (once each): they say the
    trace may not hold for other inputs (a Python branch on a tensor, a size turned into a constant)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning) and str(w.message) not in seen:
            seen.add(str(w.message))
            warnings.warn(f"{what}: the traced graph may not hold for other inputs: {w.message}",
                          torch.jit.TracerWarning, stacklevel=3)

def _flatten(out: Any) -> list[torch.Tensor]:
    """Tensors of a model output in the order the exporter emits them (tuples, lists, dicts, HF outputs)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        return [t for v in out for t in _flatten(v)]
    if hasattr(out, "to_tuple"):
        return _flatten(out.to_tuple())
    return []


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def default_dynamic_axes(example_inputs: tuple[torch.Tensor, ...], n_outputs: int,
                         *, sequence: bool = False) -> dict[str, dict[int, str]]:
    """Batch (dim 0) dynamic for every input and output; ``sequence`` also frees dim 1 of the inputs."""
    axes: dict[str, dict[int, str]] = {}
    for name, t in zip(_names("input", len(example_inputs)), example_inputs):
        if t.dim() >= 1:
            axes[name] = {0: "batch"}
            if sequence and t.dim() >= 2:
                axes[name][1] = "sequence"
    for name in _names("output", n_outputs):
        axes[name] = {0: "batch"}
    return axes


def onnx_bytes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, opset: int | None = None,
               dynamic_axes: dict[str, dict[int, str]] | None = None, what: str = "model") -> bytes:
    """Serialize ``model`` traced on ``example_inputs`` to ONNX; ModelError names the model and reason."""
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= 23:
        raise ConfigError(f"ONNX opset must be an integer in 7..23, got {opset!r}")
    with torch.no_grad():
        try:
            n_out = len(_flatten(model(*example_inputs)))
        except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is reported as one line
            raise ModelError(f"cannot export {what} to ONNX: forward on the example inputs failed: "
                             f"{_first_line(exc)}") from None
        if n_out == 0:
            raise ModelError(f"cannot export {what} to ONNX: its output holds no tensor")
        axes = default_dynamic_axes(example_inputs, n_out) if dynamic_axes is None else dynamic_axes
        buf = io.BytesIO()
        try:
            with passing_trace_warnings(f"ONNX export of {what}"):
                torch.onnx.export(model, example_inputs, buf, dynamo=False, opset_version=opset,
                                  input_names=_names("input", len(example_inputs)),
                                  output_names=_names("output", n_out), dynamic_axes=axes,
                                  do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - tracer/exporter raise many types; one line for the user
            raise ModelError(f"cannot export {what} to ONNX: {_first_line(exc)}") from None
    return buf.getvalue()


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: tuple[torch.Tensor, ...],
                *, opset: int | None = None, dynamic_axes: dict[str, dict[int, str]] | None = None,
                what: str = "model") -> int:
    """Write the ONNX file atomically; returns its size in bytes."""
    return atomic_write_bytes(path, onnx_bytes(model, example_inputs, opset=opset, dynamic_axes=dynamic_axes,
                                               what=what))


def ort_session(path: str | os.PathLike[str], threads: int | None = None, *, optimize: bool = True,
                spin: bool = True) -> Any:
    """An ONNX Runtime CPU session (raises ConfigError when onnxruntime is missing).

    ``spin=False`` stops the intra-op threads from busy-waiting after each call: slightly slower
    alone, but fair to whatever else runs on the same cores (other models, a latency comparison).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed: pip install 'deepshrink[onnx]'") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from None


def run_onnx(session: Any, example_inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """Run a session on tensors; inputs the exporter dropped as unused are skipped by name."""
    inputs = [i.name for i in session.get_inputs()]
    names = _names("input", len(example_inputs))
    if not set(names) & set(inputs):  # a graph named otherwise (e.g. the int8 backend's "input"): by position
        names = inputs + [f"unused{i}" for i in range(len(example_inputs) - len(inputs))]
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, example_inputs) if name in inputs}
    return session.run(None, feed)


def check_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: tuple[torch.Tensor, ...],
               rtol: float = 1e-3, atol: float = 1e-4) -> float:
    """Max absolute difference between ONNX Runtime and PyTorch outputs; ModelError when outside tolerance.

    An element passes when ``|ort - torch| <= atol + rtol * |torch|`` (numpy ``allclose``).
    """
    if not (rtol >= 0 and atol >= 0):
        raise ConfigError(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")
    example_inputs = _as_tuple(example_inputs)
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = [t.detach().cpu().float().numpy() for t in _flatten(model(*example_inputs))]
    except Exception as exc:  # noqa: BLE001 - the user's forward on these inputs: one line
        raise ModelError(f"check_onnx: the PyTorch model cannot run on the example inputs: {_first_line(exc)}") \
            from None
    finally:
        model.train(was_training)
    try:
        got = run_onnx(ort_session(path), example_inputs)
    except DeepShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors (shapes, dtypes, missing inputs)
        raise ModelError(f"check_onnx: ONNX Runtime cannot run {path} on the example inputs: "
                         f"{_first_line(exc)}") from None
    if len(got) != len(ref):
        raise ModelError(f"ONNX file {path} has {len(got)} outputs, the PyTorch model {len(ref)}")
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.shape != g.shape:
            raise ModelError(f"ONNX output {i} of {path} has shape {g.shape}, PyTorch {r.shape}")
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.allclose(g, r, rtol=rtol, atol=atol):
            raise ModelError(f"ONNX output {i} of {path} differs from PyTorch by up to {float(diff.max()):.3g} "
                             f"(rtol={rtol}, atol={atol})")
    return worst


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ConfigError("example_inputs must be a tensor or a tuple of tensors, "
                      f"got {type(example_inputs).__name__}")


def _first_line(exc: BaseException) -> str:
    """The exception as one line: its message with line breaks folded (a first line alone can stop mid-
    expression), at most 300 characters."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
