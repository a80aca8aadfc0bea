"""Real int8 execution with ONNX Runtime: export to ONNX, insert QDQ pairs calibrated on our data, run with
ORT's MLAS integer kernels (QLinearConv, QGemm / QLinearMatMul, MatMulInteger).

Why a second backend: on this project's CPUs (AVX2, no VNNI) torch's x86/fbgemm path gained 1.2-1.3x
over fp32 at batch 64, because PyTorch pays per-op dispatch, quantize/dequantize and layout costs
that are as large as the tiny GEMMs themselves. ORT fuses the QDQ graph into integer operators that
stay int8 from the first Conv/Gemm to the last (ReLU folded into the requantization, max-pool on
uint8, NHWC layout chosen once), so the integer kernels dominate. See docs/quantization.md for
the measured profile.

Layers whose reduction length ``K = in_channels / groups * kernel area`` is tiny (a first
convolution on a one-channel image: ``K = 25``) run faster in fp32 (MLAS's direct NCHWc convolution)
than as an int8 im2col GEMM; ``float_layers="auto"`` keeps those float and lists them in
``fallbacks``.

Requires the ``onnx`` extra (``onnx``, ``onnxruntime``); without it ``ConfigError`` says so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.core.fileio import atomic_write_bytes

#: ONNX operators that execute integer arithmetic (what tests and reports look for).
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul"})
#: Our observer names -> ORT calibration methods (ORT computes the ranges on our calibration batches).
#: (Not "entropy": quantize_static gives ORT's entropy calibrator 128 histogram bins for 128 quantized bins, so
#: its threshold search has one candidate, the full range, and the result equals minmax byte for byte.)
ORT_CALIBRATION = {"minmax": "MinMax", "moving_average": "MinMax", "percentile": "Percentile"}
AUTO_FLOAT_K = 32


def _require_ort() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:  # optional dependency
        raise ConfigError("the onnxruntime backend needs the onnx extra: pip install 'deepshrink[onnx]' "
                          f"({exc})") from None
    return onnxruntime


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """True when /proc/cpuinfo lists AVX-512 VNNI or AVX-VNNI (int8 dot products in one instruction)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set(text.split())
    return bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags)


def _session(model_bytes: bytes, threads: int, spin: bool, disabled: Sequence[str] = ()) -> Any:
    ort = _require_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def optimized_op_types(model_bytes: bytes, disabled: Sequence[str] = ()) -> list[str]:
    """Operator types of the graph ORT really executes (after its QDQ fusions), in node order."""
    import onnx

    ort = _require_ort()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """A model input for ONNX Runtime: float tensors as float32 (the exported graph's type), integer ones (token
    ids) as they are, which is how the exporter traced them."""
    x = x.detach().to("cpu")
    return (x.float() if x.is_floating_point() else x).contiguous().numpy()


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` interface (tensor in, tensor out; CPU).

    ``model_bytes`` is the serialized ONNX model (``save`` writes it); ``threads`` is the session's
    intra-op thread count, fixed when the session is created; ``disabled_optimizers`` names ORT graph
    transformers to skip.
    """

    #: what runs it: the artifact writer and ``export_model`` refuse (or, for ONNX, pass on) such modules
    deepshrink_runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, *, threads: int = 2, spin: bool = True, description: str = "",
                 disabled_optimizers: Sequence[str] = ()) -> None:
        super().__init__()
        self.model_bytes = model_bytes
        self.threads = threads
        self.description = description
        self.disabled_optimizers = tuple(disabled_optimizers)
        self.session = _session(model_bytes, threads, spin, self.disabled_optimizers)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The graph's output; a graph of several outputs (a model returning a tuple) gives them all."""
        arr = _as_numpy(x)
        outs = [torch.from_numpy(np.asarray(o)).to(x.device) for o in self.session.run(None, {self.input_name: arr})]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def op_types(self) -> list[str]:
        """Operator types after ORT's graph optimizations (QDQ pairs fused into integer operators)."""
        return optimized_op_types(self.model_bytes, self.disabled_optimizers)

    def save(self, path: str | Path) -> Path:
        """Write the ONNX model (atomically); returns the path."""
        atomic_write_bytes(path, self.model_bytes)
        return Path(path)

    def extra_repr(self) -> str:
        return f"{self.description}, threads={self.threads}"


def export_onnx(model: nn.Module, example: torch.Tensor, opset: int = 17) -> bytes:
    """Export ``model`` (eval mode, batch dimension dynamic) with the TorchScript exporter; returns bytes."""
    from deepshrink.quantize.backends.torch_int8 import _plain_copy

    plain = _plain_copy(model).cpu().eval()
    from deepshrink.export.onnx import passing_trace_warnings

    with tempfile.TemporaryDirectory() as tmp, passing_trace_warnings(f"ONNX export of {type(model).__name__}"):
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(plain, (example.cpu(),), str(path), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        except Exception as exc:  # the exporter raises many types for unsupported models
            raise ModelError(f"cannot export {type(model).__name__} to ONNX: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return path.read_bytes()


PASS_THROUGH_OPS = ("Relu", "Clip", "MaxPool", "AveragePool", "Flatten", "Reshape", "Identity")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the ORT quantizer's advice on the root logger, its prints ("Collecting tensor data and making
    histogram ...": library code never prints) and Python warnings (restored after)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _layer_nodes(onnx_model: Any, layer: str) -> list[str]:
    """The Conv/Gemm/MatMul nodes the exporter emitted for ``layer``, plus the pass-through ops (ReLU,
    pooling, flatten) that follow it up to the next weighted layer: those stay float too, so the
    QuantizeLinear lands after the pooling (a uint8 NCHW MaxPool is a slow generic kernel in ORT)."""
    prefix = "/" + layer.replace(".", "/") + "/"
    nodes = list(onnx_model.graph.node)
    out = [n for n in nodes if n.name.startswith(prefix) and n.op_type in ("Conv", "Gemm", "MatMul")]
    names = [n.name for n in out]
    frontier = [t for n in out for t in n.output]
    while frontier:
        tensor = frontier.pop()
        consumers = [n for n in nodes if tensor in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in PASS_THROUGH_OPS:
            continue
        names.append(consumers[0].name)
        frontier.extend(consumers[0].output)
    return names


def auto_float_layers(model: nn.Module, min_k: int = AUTO_FLOAT_K) -> list[str]:
    """Convolutions whose reduction length ``in_channels / groups * kernel area`` is below ``min_k``.

    Such layers (a first conv on a grey image: K = 25) are faster as fp32 direct convolutions than
    as int8 im2col GEMMs with a padded, mostly empty reduction (measured 0.53 ms vs 1.9 ms for
    LeNet-5's conv1 at batch 64).
    """
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            k = m.in_channels // m.groups * int(np.prod(m.kernel_size))
            if k < min_k:
                out.append(name)
    return out


class _Reader:
    """ORT CalibrationDataReader over our calibration batches."""

    def __init__(self, name: str, batches: Sequence[torch.Tensor]) -> None:
        self.name = name
        self.batches = list(batches)
        self.it: Iterator[torch.Tensor] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.it, None)
        return None if b is None else {self.name: _as_numpy(b)}

    def rewind(self) -> None:
        self.it = iter(self.batches)


def to_onnxruntime(model: nn.Module, calibration_data: Any = None, *, mode: str = "static",
                   observer: str = "minmax", per_channel: bool = True, float_layers: str | Sequence[str] = "auto",
                   activation_type: str = "uint8", reduce_range: bool | None = None, threads: int | None = None,
                   spin: bool = True, example: torch.Tensor | None = None, max_batches: int = 8,
                   strict: bool = False) -> tuple[OrtModule, list[str]]:
    """Export ``model`` to ONNX and return (an ORT session module, fallbacks).

    ``mode``: ``static`` (QDQ pairs around every Conv/Gemm, activations calibrated on
    ``calibration_data``; ORT fuses them into QLinearConv / QGemm), ``dynamic`` (weights int8,
    activations quantized per call: MatMulInteger / ConvInteger) or ``float`` (the fp32 ONNX model, the
    baseline to compare with). ``float_layers``: layer names kept fp32, or ``auto``
    (``auto_float_layers``). ``reduce_range`` (7-bit weights) avoids int16 saturation of AVX2's
    ``vpmaddubsw``; None = on when the CPU has no VNNI. ``threads``: ORT intra-op threads (default:
    torch's current count).
    """
    _require_ort()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from deepshrink.quantize.backends.torch_int8 import _calib_batches, _fallbacks, _plain_copy, _probe, check_float32

    if mode not in ("static", "dynamic", "float"):
        raise ConfigError(f"onnxruntime mode must be static, dynamic or float, got {mode!r}")
    if observer == "entropy":
        raise ConfigError("observer 'entropy' is not available with the onnxruntime backend: ONNX Runtime's "
                          "quantize_static runs its entropy search on a 128-bin histogram, which leaves the full "
                          "range (= minmax); use 'percentile', or the torch backend's entropy observer")
    if observer not in ORT_CALIBRATION:
        raise ConfigError(f"onnxruntime observer must be one of {sorted(ORT_CALIBRATION)}, got {observer!r}")
    if activation_type not in ("uint8", "int8"):
        raise ConfigError(f"activation_type must be uint8 or int8, got {activation_type!r}")
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ModelError(f"{name}: contains NaN or inf; cannot quantize")
    batches = _calib_batches(calibration_data, max_batches) if mode == "static" else []
    if example is None:
        if not batches:
            if calibration_data is None:
                raise ConfigError(f"onnxruntime mode {mode!r} needs an example input (example=) or calibration_data")
            batches = _calib_batches(calibration_data, 1)
        example = batches[0][:1]
    check_float32(model)
    _probe(model, [example])
    with torch.no_grad():
        reference = _plain_copy(model).eval()(example)
    if not isinstance(reference, (torch.Tensor, tuple, list)) or (
            not isinstance(reference, torch.Tensor) and not all(isinstance(o, torch.Tensor) for o in reference)):
        raise ModelError(f"{type(model).__name__} returns {type(reference).__name__}: the onnxruntime backend "
                         "runs models that return a tensor or a tuple of tensors")
    float_bytes = export_onnx(model, example)
    if mode == "float":
        return OrtModule(float_bytes, threads=threads, spin=spin, description="onnxruntime fp32"), []
    kernel_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    fallbacks = _fallbacks(_plain_copy(model), kernel_types)  # what is stored (a quantized embedding is float)
    keep = auto_float_layers(model) if float_layers == "auto" else list(float_layers)
    names = {n for n, _ in model.named_modules()}
    for layer in keep:
        if layer not in names:
            raise ConfigError(f"float_layers: {layer!r} is not a module of {type(model).__name__}")
    fallbacks += [f"{layer} (kept fp32: faster than int8 here)" for layer in keep]
    if strict and fallbacks:
        raise ModelError(f"no int8 kernel for: {', '.join(fallbacks)}")
    proto = onnx.load_from_string(float_bytes)
    exclude = [node for layer in keep for node in _layer_nodes(proto, layer)]
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        out = Path(tmp) / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(copy.deepcopy(proto), out, per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        else:
            extra = {"CalibMovingAverage": True} if observer == "moving_average" else {}
            act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
            quantize_static(copy.deepcopy(proto), out, _Reader("input", batches), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=act,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                            calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION[observer]),
                            extra_options=extra)
        int8_bytes = out.read_bytes()
    desc = f"onnxruntime int8 {mode}" + (f", fp32: {', '.join(keep)}" if keep else "")
    # With float layers, ORT's QDQ propagation would move the first QuantizeLinear above the float
    # max-pool, making it a uint8 NCHW MaxPool (a slow generic kernel: 2.7 ms vs 0.23 ms fp32 here).
    disabled = ("QDQPropagationTransformer",) if keep else ()
    return OrtModule(int8_bytes, threads=threads, spin=spin, description=desc, disabled_optimizers=disabled), fallbacks


def profile_nodes(module: OrtModule, example: torch.Tensor, runs: int = 100) -> list[tuple[str, str, float]]:
    """Per-node kernel time of ``module`` on ``example``: (node, operator, minimum microseconds over ``runs``),
    slowest first. The minimum is the least noise-sensitive statistic on a shared machine."""
    import json

    ort = _require_ort()
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"runs must be a positive integer, got {runs!r}")
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = module.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(module.model_bytes, so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(module.disabled_optimizers))
        feed = {sess.get_inputs()[0].name: _as_numpy(example)}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    times: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], str(e.get("args", {}).get("op_name", "")))
            times.setdefault(key, []).append(float(e["dur"]))
    rows = [(node, op, min(v)) for (node, op), v in times.items()]
    return sorted(rows, key=lambda r: -r[2])
