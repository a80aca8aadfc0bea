"""The entry point ``quantize(model, config, calibration_data=None)``: one handler per config type.

Weight schemes attach a frozen ``QuantizedWeight`` (or k-means codebook) to each selected layer;
activation schemes add input quantizers calibrated on ``calibration_data``; QAT attaches trainable
fake quantizers (train with ``deepshrink.train.Trainer``, then ``qat.freeze``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError, DataError, DeepShrinkError, ModelError
from deepshrink.quantize import primitives as P
from deepshrink.quantize.config import (
    BinaryConfig,
    FixedPointConfig,
    Int8DynamicConfig,
    IntWeightConfig,
    KMeansConfig,
    PowerOfTwoConfig,
    QATConfig,
    QuantConfig,
    SkipConfig,
    StaticConfig,
    TernaryConfig,
)
from deepshrink.quantize.kmeans import SharedCodebook, share_weights
from deepshrink.quantize.modules import (
    ActQuantizer,
    QuantizedWeight,
    add_input_quantizer,
    attach,
    input_quantizers,
)
from deepshrink.quantize.observers import make_observer
from deepshrink.quantize.qat import TRAINABLE, FakeBinaryWeight, FakeQuantWeight, FakeTernaryWeight, LSQWeight

Handler = Callable[[nn.Module, str, Any], None]
HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Register the function that quantizes one layer for ``config_type`` (the registry is keyed by type)."""
    def deco(fn: Handler) -> Handler:
        if config_type in HANDLERS:
            raise ConfigError(f"a handler for {config_type.__name__} is already registered")
        HANDLERS[config_type] = fn
        return fn

    return deco


def _handler(cfg: QuantConfig) -> Handler:
    for klass in type(cfg).__mro__:
        if klass in HANDLERS:
            return HANDLERS[klass]
    raise ConfigError(f"no quantization scheme is registered for {type(cfg).__name__}")


def _weight(module: nn.Module, where: str) -> torch.Tensor:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise ModelError(f"{where}: {type(module).__name__} has no weight tensor to quantize")
    if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, (QuantizedWeight, SharedCodebook, *TRAINABLE))
            for p in module.parametrizations["weight"]):
        raise ConfigError(f"{where}: the weight is already quantized or shared (k-means); quantize the float "
                          "(or pruned) model")
    w = w.detach().float()
    P.check_finite(w, f"{where}.weight")
    return w


def _half_precision(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to float16 precision (11 significant bits, float32's exponent range): the weights
    use them in memory, so the artifact stores each exactly in about 12 bits instead of 32."""
    mantissa, exponent = torch.frexp(scale)
    return torch.ldexp(torch.round(mantissa * 2048) / 2048, exponent).to(scale.dtype)


def _uniform(module: nn.Module, where: str, w3: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
             symmetric: bool, rounding: str = "nearest", seed: int = 0, scheme: str = "uniform",
             shape: tuple[int, ...] = ()) -> None:
    scale, zp = P.qparams(lo, hi, bits, symmetric)
    scale = _half_precision(scale)
    gen = torch.Generator().manual_seed(seed) if rounding == "stochastic" else None
    codes = P.quantize(w3, scale, zp, bits, rounding, gen)  # type: ignore[arg-type]
    attach(module, QuantizedWeight(codes, bits, shape, scale=scale, zero_point=zp, scheme=scheme))


@register_handler(IntWeightConfig)
def _int_weight(module: nn.Module, where: str, cfg: IntWeightConfig) -> None:
    w = _weight(module, where)
    w3 = P.grouped(w, cfg.granularity, cfg.group_size)  # type: ignore[arg-type]
    if cfg.weight_observer == "mse":
        lo, hi = P.mse_ranges(w3, cfg.bits, cfg.symmetric)
    else:
        lo, hi = P.minmax_ranges(w3)
    _uniform(module, where, w3, lo, hi, cfg.bits, cfg.symmetric, cfg.rounding, cfg.seed, shape=tuple(w.shape))


@register_handler(FixedPointConfig)
def _fixed_point(module: nn.Module, where: str, cfg: FixedPointConfig) -> None:
    w = _weight(module, where)
    w3 = P.grouped(w, "per_tensor")
    scale, zp = P.fixed_point_qparams(cfg.bits, cfg.frac_bits, w)
    attach(module, QuantizedWeight(P.quantize(w3, scale, zp, cfg.bits), cfg.bits, tuple(w.shape), scale=scale,
                                   zero_point=zp, scheme="fixed_point"))


@register_handler(PowerOfTwoConfig)
def _pow2(module: nn.Module, where: str, cfg: PowerOfTwoConfig) -> None:
    w = _weight(module, where)
    w3 = P.grouped(w, cfg.granularity)  # type: ignore[arg-type]
    levels = P.pow2_levels(w3, cfg.bits)
    attach(module, QuantizedWeight(P.pow2_codes(w3, levels), cfg.bits, tuple(w.shape), levels=levels,
                                   scheme="pow2"))


@register_handler(BinaryConfig)
def _binary(module: nn.Module, where: str, cfg: BinaryConfig) -> None:
    w = _weight(module, where)
    if cfg.trainable:
        attach(module, FakeBinaryWeight(cfg.granularity))
        return
    codes, scale, zp = P.binary_params(P.grouped(w, cfg.granularity))  # type: ignore[arg-type]
    attach(module, QuantizedWeight(codes, 1, tuple(w.shape), scale=scale, zero_point=zp, scheme="binary"))


@register_handler(TernaryConfig)
def _ternary(module: nn.Module, where: str, cfg: TernaryConfig) -> None:
    w = _weight(module, where)
    if cfg.trainable:
        attach(module, FakeTernaryWeight(cfg.threshold, cfg.granularity))
        return
    codes, scale, zp = P.ternary_params(P.grouped(w, cfg.granularity), cfg.threshold)  # type: ignore[arg-type]
    attach(module, QuantizedWeight(codes, 2, tuple(w.shape), scale=scale, zero_point=zp, scheme="ternary"))


@register_handler(KMeansConfig)
def _kmeans(module: nn.Module, where: str, cfg: KMeansConfig) -> None:
    _weight(module, where)
    if parametrize.is_parametrized(module, "weight"):
        raise ConfigError(f"{where}: k-means needs a plain weight; make pruning masks permanent first")
    share_weights(module, cfg.bits, init=cfg.init)  # type: ignore[arg-type]


@register_handler(StaticConfig)
def _static(module: nn.Module, where: str, cfg: StaticConfig) -> None:
    _int_weight(module, where, IntWeightConfig(bits=cfg.weight_bits, granularity=cfg.granularity,
                                               group_size=cfg.group_size, symmetric=True))
    obs = make_observer(cfg.observer, cfg.act_bits, cfg.act_symmetric)
    add_input_quantizer(module, ActQuantizer(cfg.act_bits, cfg.act_symmetric, obs, "observe", f"{where} input"))


@register_handler(Int8DynamicConfig)
def _dynamic(module: nn.Module, where: str, cfg: Int8DynamicConfig) -> None:
    _int_weight(module, where, IntWeightConfig(bits=8, granularity=cfg.granularity))
    add_input_quantizer(module, ActQuantizer(8, False, None, "dynamic", f"{where} input"))


@register_handler(QATConfig)
def _qat(module: nn.Module, where: str, cfg: QATConfig) -> None:
    w = _weight(module, where)
    if cfg.lsq:
        fq: nn.Module = LSQWeight(w, cfg.weight_bits, cfg.granularity)
    else:
        fq = FakeQuantWeight(cfg.weight_bits, cfg.granularity, cfg.group_size)
        P.grouped(w, cfg.granularity, cfg.group_size)  # type: ignore[arg-type]  # validates group_size early
    attach(module, fq)
    if cfg.act_bits is not None:
        obs = make_observer("moving_average", cfg.act_bits)
        add_input_quantizer(module, ActQuantizer(cfg.act_bits, False, obs, "observe", f"{where} input"))


def selected_layers(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Module, QuantConfig]]:
    """(name, module, effective config) of every layer ``config`` quantizes."""
    out = []
    for name, module in model.named_modules():
        if ".parametrizations" in f".{name}" or not config.selects(name, module):
            continue
        cfg = config.for_layer(name)
        if cfg is None or isinstance(cfg, SkipConfig):
            continue
        out.append((name, module, cfg))
    return out


def _batches(data: Any) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def as_tensor_data(data: Any) -> Any:
    """A numpy array or a nested list of numbers (samples) as a tensor, float32 when the values are floats;
    anything else (a tensor, a dataset, a loader, a list of batches) unchanged."""
    if isinstance(data, list) and data and isinstance(data[0], (list, tuple)) and data[0] \
            and isinstance(data[0][0], (int, float)) and not isinstance(data[0][0], bool):
        try:
            data = np.asarray(data)
        except ValueError as exc:  # ragged rows
            raise DataError(f"calibration data: the samples do not form an array ({exc})") from None
    if isinstance(data, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(data))
        return t.float() if t.is_floating_point() else t
    return data


def run_calibration_batch(model: Any, x: torch.Tensor, i: int) -> None:
    """``model(x)``; a batch the model cannot take is one DataError naming its shape and dtype."""
    try:
        model(x)
    except DeepShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's forward raises any type on a wrong input
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"calibration batch {i} (shape {tuple(x.shape)}, {x.dtype}) does not run through "
                        f"{type(model).__name__}: {reason}") from None


def calibrate(model: nn.Module, calibration_data: Any, max_batches: int | None = None) -> int:
    """Run ``calibration_data`` (a tensor, dataset or loader of inputs / (inputs, labels)) through
    ``model`` with its observers on, then freeze every observer. Returns the number of samples seen."""
    quantizers = [q for q in input_quantizers(model).values() if q.mode == "observe"]
    if not quantizers:
        return 0
    if calibration_data is None:
        raise DataError("this scheme quantizes activations: pass calibration_data")
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, x in enumerate(_batches(as_tensor_data(calibration_data))):
                if max_batches is not None and i >= max_batches:
                    break
                if not isinstance(x, torch.Tensor):
                    raise DataError(f"calibration batch {i} is a {type(x).__name__}, not a tensor (give a tensor, "
                                    "a dataset or a loader of tensors)")
                if x.dim() == 0 or x.shape[0] == 0:
                    continue
                run_calibration_batch(model, x, i)
                seen += int(x.shape[0])
    finally:
        model.train(was_training)
    if seen == 0:
        raise DataError("the calibration set is empty")
    for q in quantizers:
        q.freeze()
    return seen


def _refuse_shared_weights(model: nn.Module, layers: list[Any]) -> None:
    """ConfigError when a selected layer's weight is also another module's parameter (an embedding tied to
    the output layer): quantizing one use would silently untie them, and the artifact could not rebuild both."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    chosen = {name for name, _, _ in layers}
    for name, module, _ in layers:
        weight = module._parameters.get("weight")
        if weight is None:
            continue
        others = [n for n in owners.get(id(weight), []) if n.rpartition(".")[0] != name
                  and n.rpartition(".")[0] not in chosen]
        if others:
            raise ConfigError(f"{name or type(module).__name__}: its weight is shared with {others[0]}, which is "
                              "not quantized with it; quantize both layers, untie them, or skip this one")


def quantize(model: nn.Module, config: QuantConfig, calibration_data: Any = None, *,
             inplace: bool = False) -> nn.Module:
    """Quantize the layers ``config`` selects and return the model (a deep copy unless ``inplace``).

    The result is a plain float module with parametrized (dequantized) weights and, for activation
    schemes, input fake-quantizers calibrated on ``calibration_data``.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"expected a quantization config, got {type(config).__name__}")
    target = model if inplace else copy.deepcopy(model)
    layers = selected_layers(target, config)
    if not layers:
        raise ConfigError(f"{type(config).__name__} selects no layer "
                          f"(layers={config.layers!r}, types={config.types})")
    check_materialized(target)
    _refuse_shared_weights(target, layers)
    done: list[tuple[nn.Module, int, bool]] = []
    try:
        for name, module, cfg in layers:
            done.append(_state_before(module))
            try:
                _handler(cfg)(module, name, cfg)
            except DeepShrinkError as exc:
                label = name or type(module).__name__
                if str(exc).startswith(f"{label}:"):
                    raise
                raise type(exc)(f"{label}: {exc}") from None
        calibrate(target, calibration_data)
    except BaseException:
        if inplace:  # the caller's model goes back to how it was, so a corrected call can follow
            for module, n_before, had_input in reversed(done):
                _undo(module, n_before, had_input)
        raise
    return target


def _state_before(module: nn.Module) -> tuple[nn.Module, int, bool]:
    n = len(module.parametrizations["weight"]) if parametrize.is_parametrized(module, "weight") else 0
    return module, n, isinstance(getattr(module, "input_quant", None), ActQuantizer)


def _undo(module: nn.Module, n_before: int, had_input: bool) -> None:
    """Remove the weight parametrizations and input quantizer ``quantize`` added to ``module``."""
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations["weight"]
        if n_before == 0:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        else:
            while len(plist) > n_before:
                del plist[-1]
    if not had_input:
        from deepshrink.quantize.modules import remove_input_quantizer

        remove_input_quantizer(module)


def check_materialized(model: nn.Module) -> None:
    """ModelError when a weight is on the meta device (built without data: load its weights first)."""
    meta = next((n for n, t in model.state_dict().items() if t.is_meta), None)
    if meta is not None:
        raise ModelError(f"{meta} is on the meta device (a model built without its weights); load the weights "
                         "before quantizing")
