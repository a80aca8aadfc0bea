"""Real int8 execution on CPU with PyTorch's quantized kernels (``torch.ao.quantization``, x86/fbgemm engine).

Static: FX graph mode first (quantizes the whole graph, functional ReLU / pooling included, so
tensors stay int8 between layers); models that cannot be traced (data-dependent control flow)
fall back to eager mode with a quantize -> int8 layer -> dequantize wrapper around every Linear and
Conv. Dynamic: ``quantize_dynamic`` (int8 Linear, activations quantized per call; convolutions
have no dynamic kernel and stay float). Layer types with no integer kernel stay float and are
listed in ``Int8Model.fallbacks`` (``strict=True`` raises instead).

``torch.ao.quantization`` is deprecated in favour of torchao, but it is what torch 2.13 ships
with x86 integer kernels for Linear and Conv on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, DataError, DeepShrinkError, ModelError

INT_KERNEL_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
OBSERVER_MAP = {"minmax": "MinMaxObserver", "moving_average": "MovingAverageMinMaxObserver",
                "histogram": "HistogramObserver", "percentile": "HistogramObserver", "mse": "HistogramObserver",
                "entropy": "HistogramObserver"}


@dataclass
class Int8Model:
    """The converted model, how it was converted, and which weighted layers stayed float."""

    model: nn.Module
    method: str
    fallbacks: list[str] = field(default_factory=list)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


@contextlib.contextmanager
def _quiet_engine(engine: str) -> Iterator[None]:
    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"quantized engine {engine!r} is not available; torch offers "
                          f"{torch.backends.quantized.supported_engines}")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            torch.backends.quantized.engine = old


def _plain_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for module in list(m.modules()):
        if parametrize.is_parametrized(module):
            # Not remove_parametrizations: a deep copy shares the generated Parametrized* class with the
            # original, and removing deletes the property from that class, breaking the original model.
            with torch.no_grad():
                values = {n: getattr(module, n).detach().clone() for n in module.parametrizations.keys()}
            module.__class__ = type(module).__bases__[0]
            del module._modules["parametrizations"]
            for n, v in values.items():
                module.register_parameter(n, nn.Parameter(v))
    for name, module in m.named_modules():
        if hasattr(module, "input_quant"):
            raise ModelError(f"{name}: pass the float model to to_int8, not a fake-quantized one")
    return m


def _quantizable_copy(model: nn.Module) -> nn.Module:
    """The plain float copy to quantize, refused when a weight holds NaN or inf."""
    from deepshrink.quantize.ptq import check_materialized

    check_materialized(model)
    check_float32(model)
    m = _plain_copy(model)
    for name, p in m.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ModelError(f"{name}: contains NaN or inf; cannot quantize")
    return m


def check_float32(model: nn.Module) -> None:
    """ModelError unless every float tensor of ``model`` is float32: the int8 kernels take float32
    activations, and a half or double model converts to one that fails on every call."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ModelError(f"{name} is {t.dtype}: int8 conversion takes a float32 model (model.float() first)")


def check_converted(converted: Any, reference: nn.Module, batch: torch.Tensor, what: str) -> None:
    """ModelError unless the converted model runs on a calibration batch and returns what the float model
    does (the same kind of output, tensors of the same shapes)."""
    with torch.no_grad():
        expected = reference.eval()(batch)
        try:
            got = converted(batch)
        except Exception as exc:  # the converted graph's own failure: one line, naming the conversion
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"the {what} int8 model of {type(reference).__name__} cannot run: {reason}") from None

    def shapes(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return tuple(out.shape)
        if isinstance(out, (tuple, list)):
            return [shapes(o) for o in out]
        if isinstance(out, dict):
            return {k: shapes(v) for k, v in out.items()}
        return type(out).__name__

    if shapes(got) != shapes(expected):
        raise ModelError(f"the {what} int8 model of {type(reference).__name__} returns {shapes(got)}, the float "
                         f"model {shapes(expected)}")


def check_observed(prepared: nn.Module) -> None:
    """DataError naming the first activation observer that calibration never reached (a branch the
    calibration data did not take): its int8 range would be made up and zero the layer's output."""
    for name, mod in prepared.named_modules():
        low = getattr(mod, "min_val", None)
        if isinstance(low, torch.Tensor) and (low.numel() == 0 or bool(torch.isinf(low).any())):
            where = name.rsplit(".activation_post_process", 1)[0] or name
            raise DataError(f"{where}: its observer saw no data (the calibration batches never reach this layer); "
                            "calibrate with data that runs every branch")


def _probe(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run the float model on the first calibration batch: a batch it cannot take (wrong width or dtype) is
    one DataError here rather than a traceback from inside the observers or the exporter."""
    from deepshrink.quantize.ptq import run_calibration_batch

    was = model.training
    try:
        with torch.no_grad():
            run_calibration_batch(model.eval(), batches[0], 0)
    finally:
        model.train(was)  # the caller's model keeps its mode
    return batches


def _calib_batches(data: Any, max_batches: int) -> list[torch.Tensor]:
    from deepshrink.quantize.ptq import as_tensor_data

    if data is None:
        raise DataError("static int8 conversion needs calibration_data")
    data = as_tensor_data(data)
    if isinstance(data, torch.Tensor):
        batches = [data]
    else:
        if isinstance(data, torch.utils.data.Dataset):
            data = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
        batches = []
        for i, b in enumerate(data):
            if i >= max_batches:
                break
            b = b[0] if isinstance(b, (tuple, list)) else b
            if not isinstance(b, torch.Tensor):
                raise DataError(f"calibration batch {i} is a {type(b).__name__}, not a tensor (give a tensor, a "
                                "dataset or a loader of tensors)")
            batches.append(b)
    batches = [b for b in batches if b.numel() > 0]
    if not batches:
        raise DataError("the calibration set is empty")
    for b in batches:
        if not bool(torch.isfinite(b).all()):
            raise ModelError("calibration data contains NaN or inf")
    return batches


def qconfig(observer: str = "minmax", per_channel: bool = True) -> Any:
    """A torch QConfig: quint8 activations with the mapped observer, qint8 symmetric weights."""
    import torch.ao.quantization as tq

    if observer not in OBSERVER_MAP:
        raise ConfigError(f"int8 backend observer must be one of {sorted(OBSERVER_MAP)}, got {observer!r}")
    act = getattr(tq, OBSERVER_MAP[observer]).with_args(dtype=torch.quint8, reduce_range=True)
    weight = tq.default_per_channel_weight_observer if per_channel else tq.default_weight_observer
    return tq.QConfig(activation=act, weight=weight)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_batchnorms(model: nn.Module) -> set[str]:
    """Batch norms fed directly by a convolution: every int8 backend folds them into it (torch FX fuses
    Conv-BN, the ONNX exporter and Inductor's freezing fold them), so they are no float fallback. Found on a
    torch.fx trace; when the model cannot be traced, a batch norm that follows a convolution of as many
    channels in module order."""
    modules = dict(model.named_modules())
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models fall back to module order
        names, out = list(modules), set()
        for prev, name in zip(names, names[1:]):
            a, b = modules[prev], modules[name]
            if isinstance(b, _BATCHNORMS) and isinstance(a, convs) and a.out_channels == b.num_features:
                out.add(name)
        return out
    out = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), convs) and len(src.users) == 1):
            out.add(str(node.target))
    return out


def _fallbacks(model: nn.Module, kernel_types: tuple[type, ...]) -> list[str]:
    """Leaf layers with a weight that no int8 kernel runs (batch norms folded into a convolution excepted,
    when convolutions have int8 kernels here)."""
    folded = folded_batchnorms(model) if any(issubclass(t, nn.Conv2d) for t in kernel_types) else set()
    def weighted(m: nn.Module) -> bool:  # a weight, or matrices of its own (LSTM/GRU weight_ih_l0, MHA in_proj)
        own = any(p.dim() >= 2 for p in m.parameters(recurse=False))
        return own or (isinstance(getattr(m, "weight", None), torch.Tensor) and not list(m.children()))

    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if weighted(m) and not isinstance(m, kernel_types) and name not in folded]


class _Wrapped(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        import torch.ao.quantization as tq

        self.quant = tq.QuantStub()
        self.layer = layer
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.layer(self.quant(x)))


def _eager_static(model: nn.Module, qc: Any, batches: list[torch.Tensor]) -> nn.Module:
    import torch.ao.quantization as tq

    def wrap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, INT_KERNEL_TYPES):
                w = _Wrapped(child)
                w.qconfig = qc
                setattr(parent, name, w)
            else:
                wrap(child)

    wrap(model)
    prepared = tq.prepare(model, inplace=False)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    check_observed(prepared)
    return tq.convert(prepared, inplace=False)


def _fx_static(model: nn.Module, qc: Any, batches: list[torch.Tensor]) -> nn.Module:
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = QConfigMapping().set_global(qc)
    prepared = prepare_fx(model, mapping, (batches[0],))
    with torch.no_grad():
        for b in batches:
            prepared(b)
    check_observed(prepared)
    return convert_fx(prepared)


def to_int8(model: nn.Module, calibration_data: Any = None, *, mode: str = "static", observer: str = "minmax",
            per_channel: bool = True, graph: str = "auto", engine: str = "x86", strict: bool = False,
            max_batches: int = 8, backend: str = "torch", **backend_options: Any) -> Int8Model:
    """Convert a float model (masks are baked in) to one that runs int8 kernels.

    ``backend``: ``torch`` (``torch.ao.quantization``; ``graph`` is ``fx``, ``eager`` or ``auto`` = FX,
    eager when the model cannot be traced) or ``onnxruntime`` (ONNX export with QDQ nodes run by ORT's
    integer kernels; ``backend_options`` go to ``backends.onnxruntime.to_onnxruntime``, e.g.
    ``threads``, ``float_layers``) or ``inductor`` (torch.export + torchao's X86InductorQuantizer +
    Inductor with weight freezing: oneDNN int8 kernels; static mode, needs torchao and a C++ compiler).
    """
    if backend == "onnxruntime":
        from deepshrink.quantize.backends.onnxruntime import to_onnxruntime

        if mode not in ("static", "dynamic"):
            raise ConfigError(f"int8 mode must be static or dynamic, got {mode!r}")
        module, fallbacks = to_onnxruntime(model, calibration_data, mode=mode, observer=observer,
                                           per_channel=per_channel, strict=strict, max_batches=max_batches,
                                           **backend_options)
        return Int8Model(module, f"onnxruntime-{mode}", fallbacks)
    if backend == "inductor":
        return _inductor(model, calibration_data, mode=mode, observer=observer, per_channel=per_channel,
                         strict=strict, max_batches=max_batches, **backend_options)
    if backend != "torch":
        raise ConfigError(f"int8 backend must be torch, onnxruntime or inductor, got {backend!r}")
    if backend_options:
        raise ConfigError(f"unknown options for the torch backend: {', '.join(sorted(backend_options))}")
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"int8 mode must be static or dynamic, got {mode!r}")
    if graph not in ("auto", "fx", "eager"):
        raise ConfigError(f"graph must be auto, fx or eager, got {graph!r}")
    float_model = _quantizable_copy(model)
    with _quiet_engine(engine):
        if mode == "dynamic":
            import torch.ao.quantization as tq

            fallbacks = _fallbacks(float_model, (nn.Linear,))
            if strict and fallbacks:
                raise ModelError(f"no dynamic int8 kernel for: {', '.join(fallbacks)}")
            out = tq.quantize_dynamic(copy.deepcopy(float_model), {nn.Linear}, dtype=torch.qint8)
            if calibration_data is not None:  # an example to check the converted model on
                check_converted(out, float_model, _calib_batches(calibration_data, 1)[0], "dynamic")
            return Int8Model(out, "dynamic", fallbacks)
        fallbacks = _fallbacks(float_model, INT_KERNEL_TYPES)
        if strict and fallbacks:
            raise ModelError(f"no int8 kernel for: {', '.join(fallbacks)}")
        batches = _probe(float_model, _calib_batches(calibration_data, max_batches))
        qc = qconfig(observer, per_channel)
        if graph in ("auto", "fx"):
            try:
                fx = _fx_static(copy.deepcopy(float_model), qc, batches)
                check_converted(fx, float_model, batches[0], "FX")  # e.g. a view of a channels-last int8 output
                return Int8Model(fx, "fx", fallbacks)
            except DataError:
                raise
            except Exception as exc:  # torch.fx raises many types when a model cannot be traced
                if graph == "fx":
                    raise ModelError(f"FX graph mode cannot quantize {type(model).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        try:
            eager = _eager_static(copy.deepcopy(float_model), qc, batches)
        except DeepShrinkError:
            raise
        except Exception as exc:  # e.g. a forward that reads a wrapped layer's .weight
            raise ModelError(f"eager int8 conversion cannot quantize {type(model).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        check_converted(eager, float_model, batches[0], "eager")
        return Int8Model(eager, "eager", fallbacks)


def _inductor(model: nn.Module, calibration_data: Any, *, mode: str, observer: str, per_channel: bool,
              strict: bool, max_batches: int, **options: Any) -> Int8Model:
    from deepshrink.quantize.backends.inductor import INDUCTOR_KERNEL_TYPES, to_inductor

    unknown = set(options) - {"reduce_range", "batch_size", "threads"}
    if unknown:
        raise ConfigError(f"unknown options for the inductor backend: {', '.join(sorted(unknown))}")
    if mode != "static":
        raise ConfigError("the inductor backend runs static int8 only (mode='static'); "
                          "use backend='onnxruntime' or 'torch' for dynamic quantization")
    if observer != "minmax" or not per_channel:
        raise ConfigError("the inductor backend uses torchao's X86 scheme (histogram observer, per-channel "
                          "weights); observer and per_channel apply to the torch and onnxruntime backends")
    float_model = _quantizable_copy(model)
    fallbacks = _fallbacks(float_model, INDUCTOR_KERNEL_TYPES)
    if strict and fallbacks:
        raise ModelError(f"no int8 kernel for: {', '.join(fallbacks)}")
    if not any(isinstance(m, INDUCTOR_KERNEL_TYPES) for m in float_model.modules()):
        raise ModelError(f"the inductor backend found no Linear or Conv2d layer to quantize in "
                         f"{type(model).__name__}")
    batches = _probe(float_model, _calib_batches(calibration_data, max_batches))
    return Int8Model(to_inductor(float_model, batches, **options), "inductor", fallbacks)


def integer_layers(model: nn.Module) -> list[str]:
    """Names of modules that run torch's integer Linear / Conv kernels (static or dynamic)."""
    out = []
    for name, m in model.named_modules():
        kind = type(m)
        if kind.__module__.startswith("torch.ao.nn.quantized") and (
                kind.__name__.startswith(("Linear", "Conv")) or "Linear" in kind.__name__):
            if kind.__name__ != "LinearPackedParams":
                out.append(name)
    return out


def is_integer_model(model: nn.Module) -> bool:
    """True when at least one Linear or Conv runs an integer kernel."""
    return bool(integer_layers(model))
