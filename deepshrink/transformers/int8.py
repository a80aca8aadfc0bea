"""int8 Linear layers stored as integer codes: a savable int8 model that Inductor compiles as it is.

``quantize_int8(encoder, calibration=..., smooth=0.5)`` returns a copy of a float encoder whose Linear layers
are ``Int8Linear``: per-row symmetric weight codes of ``bits`` (7 or 8) bits in an int8 buffer, one float32
scale per output row, the bias, and (SmoothQuant) a per-input-channel divisor ``inv_scale``. Its eager
forward is the maths of the compiled kernel -- per-token dynamic symmetric int8 activations (torchao's
``Int8DynamicActivationInt8WeightConfig``: ``s_t = max_j |x_tj| / 127.5``, ``q = clamp(round(x / s_t),
-128, 127)``), an exact integer matmul with the codes, times both scales, plus the bias -- so the model is a
plain ``nn.Module`` that runs anywhere. ``deepshrink.save`` writes the ``bits``-bit codes bit-packed, Huffman- or range-coded, whichever is smallest
(``deepshrink.artifact.quantized.encode_int_codes``) and ``deepshrink.load`` rebuilds it exactly (the
SentenceEncoder's architecture record lists the Int8Linear layers); ``compile_int8`` of such a model uses
the stored codes and scales as torchao's ``Int8Tensor`` data, without re-quantizing. ``static_inputs``
gives chosen layers (``LN_INPUTS``: those after a LayerNorm) a uint8 input with one calibrated range
instead (``act_qparams``; compiled as oneDNN kernels with their quantization fused into the LayerNorm).

Also here (shared with ``deepshrink.transformers.inductor``, which re-exports them): ``SmoothedLinear``,
``smooth_linears`` (SmoothQuant on a float model) and ``linear_names`` (quantized / skipped Linears).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError

# every FFN down-projection (``bert.encoder.layer.<i>.output.dense``)
FFN_OUT = r"encoder\.layer\.\d+\.output\.dense$"
# the Linears that read a LayerNorm output (query/key/value and the FFN up-projection): their inputs are
# bounded and alike from token to token, so one calibrated range loses little (static_inputs=[LN_INPUTS])
LN_INPUTS = r"attention\.self\.(query|key|value)$|intermediate\.dense$"
WEIGHT_BITS = (7, 8)
ACT_QMAX = 127.5  # torchao's symmetric int8 scale divisor: (quant_max - quant_min) / 2


def per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 quantization with one scale per row of the last dimension, as torchao's
    ``Int8Tensor.from_hp(x, PerRow())``: ``s = max(max|x_row| / 127.5, eps)``, ``q = clamp(round(x * (1 /
    s)), -128, 127)``. Returns (integer-valued float32 ``q``, ``s`` with a trailing dimension of 1)."""
    x = x.float()
    s = (x.abs().amax(-1, keepdim=True) / ACT_QMAX).clamp(min=torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(x * (1.0 / s)), -128, 127), s


def per_token_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``per_token_int8(x)`` times the ``bits``-bit ``codes`` ``[out, in]``, an exact integer product (float32
    while every partial sum stays under 2^24, float64 otherwise), times the token and row scales."""
    q, s = per_token_int8(x)
    wide = 128 * 2 ** (bits - 1) * codes.shape[1] >= 2**24  # a float32 sum could round
    mm = torch.float64 if wide else torch.float32
    acc = (q.to(mm) @ codes.to(mm).t()).float()
    return acc * s * scale


def static_qparams(qparams: torch.Tensor) -> tuple[float, int]:
    """``(scale, zero_point)`` of a static uint8 input as Python numbers (what the compiled kernel bakes in);
    ModelError for values no calibration gives (a damaged or hand-edited artifact)."""
    step, zero = float(qparams[0]), float(qparams[1])
    if not (math.isfinite(step) and step > 0 and zero == round(zero) and 0 <= zero <= 255):
        raise ModelError(f"Int8Linear act_qparams must be [step > 0, integer zero point in 0..255], got "
                         f"[{step}, {zero}]")
    return step, int(zero)


def static_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, s: float, zp: int,
                  bits: int = 8) -> torch.Tensor:
    """``x`` quantized to uint8 with one calibrated range (step ``s``, zero point ``zp``; PyTorch's
    ``quantize_per_tensor`` formula ``clamp(round(x * (1 / s)) + zp, 0, 255)``, as in the compiled graph),
    minus ``zp``, times the ``bits``-bit ``codes`` exactly, times ``s`` and the row scales."""
    q = torch.clamp(torch.round(x.float() * (1.0 / s)) + zp, 0, 255) - zp
    wide = 256 * 2 ** (bits - 1) * codes.shape[1] >= 2**24  # a float32 sum could round
    mm = torch.float64 if wide else torch.float32
    acc = (q.to(mm) @ codes.to(mm).t()).float()
    return acc * s * scale


class _StaticMatmul(torch.autograd.Function):
    """``static_matmul`` that the TorchScript ONNX exporter writes as ``QuantizeLinear`` (one scale and zero
    point), ``MatMulInteger`` with the int8 codes, then both scales in float."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, s: float, zp: int,
                bits: int) -> torch.Tensor:
        return static_matmul(x, codes, scale, s, zp, bits)

    @staticmethod
    def symbolic(g: Any, x: Any, codes: Any, scale: Any, s: float, zp: int, bits: int) -> Any:
        from torch.onnx import symbolic_helper

        if symbolic_helper.GLOBALS.export_onnx_opset_version < 13:
            raise ModelError("int8 Linear layers export at ONNX opset 13 or higher (per-token QuantizeLinear)")
        s_t = g.op("Constant", value_t=torch.tensor(s, dtype=torch.float32))
        zp_t = g.op("Constant", value_t=torch.tensor(zp, dtype=torch.uint8))
        q = g.op("QuantizeLinear", g.op("Cast", x, to_i=1), s_t, zp_t)  # uint8 = round(x / s) + zp, saturated
        acc = g.op("MatMulInteger", q, g.op("Transpose", codes, perm_i=[1, 0]), zp_t)
        return g.op("Mul", g.op("Mul", g.op("Cast", acc, to_i=1), s_t), scale)


class _PerTokenMatmul(torch.autograd.Function):
    """``per_token_matmul`` that the TorchScript ONNX exporter writes as integer ops: the activation codes
    shifted to uint8 (zero point 128: ONNX Runtime's fast u8 x s8 kernels; its s8 x s8 path was 11x slower
    here), ``MatMulInteger`` with the int8 codes (an int8 initializer, so the file holds 1 byte a weight), then
    both scales in float in the same order as in PyTorch."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
        return per_token_matmul(x, codes, scale, bits)

    @staticmethod
    def symbolic(g: Any, x: Any, codes: Any, scale: Any, bits: int) -> Any:
        from torch.onnx import symbolic_helper

        def const(value: Any, dtype: torch.dtype = torch.float32) -> Any:
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        if symbolic_helper.GLOBALS.export_onnx_opset_version < 13:
            raise ModelError("int8 Linear layers export at ONNX opset 13 or higher (per-token QuantizeLinear)")
        float_t = 1  # onnx.TensorProto.FLOAT
        x = g.op("Cast", x, to_i=float_t)
        shape = g.op("Shape", x)
        rows = g.op("Reshape", x, g.op("Concat", const([-1], torch.int64),
                                       g.op("Slice", shape, const([-1], torch.int64), const([2**62], torch.int64)),
                                       axis_i=0))  # [tokens, in]
        absx = g.op("Abs", rows)
        if symbolic_helper.GLOBALS.export_onnx_opset_version >= 18:
            amax = g.op("ReduceMax", absx, const([1], torch.int64), keepdims_i=0)
        else:
            amax = g.op("ReduceMax", absx, axes_i=[1], keepdims_i=0)
        s = g.op("Max", g.op("Div", amax, const(ACT_QMAX)), const(torch.finfo(torch.float32).eps))  # [tokens]
        zero = g.op("Expand", const([128], torch.uint8), g.op("Shape", s))
        q = g.op("QuantizeLinear", rows, s, zero, axis_i=0)  # uint8 = round(x / s) + 128, saturated
        acc = g.op("MatMulInteger", q, g.op("Transpose", codes, perm_i=[1, 0]), const(128, torch.uint8))
        y = g.op("Mul", g.op("DequantizeLinear", acc, s, axis_i=0), scale)
        out_shape = g.op("Concat", g.op("Slice", shape, const([0], torch.int64), const([-1], torch.int64)),
                         g.op("Shape", scale), axis_i=0)
        return g.op("Reshape", y, out_shape)


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise ConfigError(f"weight_bits must be 7 or 8, got {bits!r}")
    return int(bits)


class Int8Linear(nn.Module):
    """``y = int8(x * inv_scale) @ codes^T * s_x * scale + bias`` with per-token dynamic activations.

    Buffers: ``codes`` int8 ``[out, in]`` within the signed ``bits`` range, ``scale`` float32 ``[out]``,
    ``bias`` float32 ``[out]`` (optional), ``inv_scale`` float32 ``[in]`` (optional: the SmoothQuant input
    divisor, already folded into the codes), ``act_qparams`` float32 ``[2]`` (optional, ``static``: the input
    is quantized to uint8 with this calibrated step and zero point instead of per token; ``calibrate_static``).
    The integer matmul runs in float32 (exact: every partial sum stays under 2^24) or float64 when the layer is
    wide enough for that to fail."""

    deepshrink_weight_buffers = ("codes", "bias")  # counted as parameters (deepshrink.measure.count)

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, bits: int = 7,
                 smoothed: bool = False, static: bool = False) -> None:
        super().__init__()
        for what, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ModelError(f"Int8Linear: {what} must be a positive integer, got {n!r}")
        self.in_features, self.out_features, self.bits = in_features, out_features, _check_bits(bits)
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("inv_scale", torch.ones(in_features) if smoothed else None)
        self.register_buffer("act_qparams", torch.tensor([1.0, 0.0]) if static else None)

    @property
    def deepshrink_int_codes(self) -> dict[str, int]:
        """Integer buffers the artifact stores bit-packed, with their width (``deepshrink.save``)."""
        return {"codes": self.bits}

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, bits: int, inv_scale: torch.Tensor | None = None) -> Int8Linear:
        """Per-row symmetric codes of ``linear.weight``: ``scale = max|w_row| / (2^(bits-1) - 0.5)``, codes
        ``round(w / scale)`` clamped to ``[-2^(bits-1), 2^(bits-1) - 1]``. ``inv_scale``: the input divisor
        of a Linear whose weight columns were already multiplied by ``1 / inv_scale`` (``smooth_linears``);
        it is kept as given (Linears reading one input may share the tensor)."""
        if not isinstance(linear, nn.Linear):
            raise ModelError(f"Int8Linear.from_float needs an nn.Linear, got {type(linear).__name__}")
        bits = _check_bits(bits)
        w = linear.weight.detach().float()
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits).to(w.device)
        if not bool(torch.isfinite(w).all()):
            raise ModelError("Int8Linear.from_float: the weight has NaN or infinite values")
        half = 2 ** (bits - 1)
        scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / (half - 0.5)
        out.codes.copy_(torch.clamp(torch.round(w / scale), -half, half - 1).to(torch.int8))
        out.scale.copy_(scale.reshape(-1))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().float())
        if inv_scale is not None:
            if not isinstance(inv_scale, torch.Tensor) or tuple(inv_scale.shape) != (linear.in_features,):
                raise ModelError(f"Int8Linear.from_float: inv_scale must be a [{linear.in_features}] tensor")
            # a registered buffer (declared in __init__); the same tensor object when Linears share one input
            out.inv_scale = inv_scale if inv_scale.dtype == torch.float32 else inv_scale.float()
        return out

    def weight_float(self) -> torch.Tensor:
        """The dequantized weight ``codes * scale`` (its columns still multiplied by ``1 / inv_scale``)."""
        return self.codes.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.inv_scale is not None:
            x = x * self.inv_scale
        if self.act_qparams is not None:
            s, zp = static_qparams(self.act_qparams)
            matmul = _StaticMatmul.apply if torch.onnx.is_in_onnx_export() else static_matmul
            y = matmul(x, self.codes, self.scale, s, zp, self.bits)
        elif torch.onnx.is_in_onnx_export():
            y = _PerTokenMatmul.apply(x, self.codes, self.scale, self.bits)
        else:
            y = per_token_matmul(x, self.codes, self.scale, self.bits)
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"bias={self.bias is not None}, smoothed={self.inv_scale is not None}, "
                f"static={self.act_qparams is not None}")


def int8_linear_names(model: nn.Module) -> list[str]:
    """Names of the model's ``Int8Linear`` modules."""
    return [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]


def int8_record(model: nn.Module) -> list[list[Any]]:
    """JSON record of the Int8Linear layers for an architecture record: ``[name, bits, smoothed, bias]``, and
    ``static`` (a fifth entry, only when true: records of per-token layers read as before)."""
    return [[n, m.bits, m.inv_scale is not None, m.bias is not None] + ([True] if m.act_qparams is not None else [])
            for n, m in model.named_modules() if isinstance(m, Int8Linear)]


def install_int8_record(model: nn.Module, record: Any) -> nn.Module:
    """Replace (in place) the recorded Linears of a freshly built model by empty ``Int8Linear`` layers of
    the same shape (the artifact loader fills their codes); ModelError on a malformed record."""
    if not isinstance(record, list):
        raise ModelError(f"int8_linears must be a list of [name, bits, smoothed, bias], got {type(record).__name__}")
    modules = dict(model.named_modules())
    for entry in record:
        if not (isinstance(entry, list) and len(entry) in (4, 5) and isinstance(entry[0], str)
                and all(isinstance(v, bool) for v in entry[2:])):
            raise ModelError(f"malformed int8_linears entry {entry!r}: expected [name, bits, smoothed, bias] "
                             "or [name, bits, smoothed, bias, static]")
        name, bits, smoothed, bias = entry[:4]
        static = len(entry) == 5 and entry[4]
        lin = modules.get(name)
        if not isinstance(lin, nn.Linear):
            raise ModelError(f"int8_linears: {name!r} is not a Linear layer of the model")
        new = Int8Linear(lin.in_features, lin.out_features, bias=bias, bits=bits, smoothed=smoothed, static=static)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, new)
        modules[name] = new
    return model


def linear_names(encoder: nn.Module, skip: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(quantized, skipped) names of the encoder's ``nn.Linear`` modules; ``skip`` are regexes searched in
    the names. ConfigError on a bad regex or a pattern that matches no Linear (a typo would silently
    quantize everything)."""
    patterns = _patterns(skip)
    names = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(encoder).__name__} has no nn.Linear layer to quantize")
    for p in patterns:
        if not any(p.search(n) for n in names):
            raise ConfigError(f"skip pattern {p.pattern!r} matches no Linear layer (e.g. {names[0]!r})")
    skipped = [n for n in names if any(p.search(n) for p in patterns)]
    quantized = [n for n in names if n not in skipped]
    if not quantized:
        raise ConfigError(f"skip={list(skip)} keeps every Linear layer in fp32: nothing to quantize")
    return quantized, skipped


def _patterns(skip: Sequence[str], what: str = "skip") -> list[re.Pattern[str]]:
    if isinstance(skip, str):
        raise ConfigError(f"{what} must be a list of regexes, not a single string")
    try:
        return [re.compile(p) for p in skip]
    except (re.error, TypeError) as exc:
        raise ConfigError(f"{what}: bad regex: {exc}") from None


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)`` with the Linear's input columns multiplied by ``1 / inv_scale`` beforehand:
    the same function in float, but the activation seen by the quantizer has its outlier channels divided
    down (SmoothQuant). Inductor fuses the multiply into the activation-quantization loop."""

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.inv_scale = inv_scale  # shared by Linears reading the same input (one fused quantization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"smooth alpha must be a number in (0, 1), got {alpha!r}")


@torch.no_grad()
def smooth_linears(model: nn.Module, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], names: Sequence[str],
                   alpha: float = 0.5) -> list[str]:
    """SmoothQuant in place: for each named Linear, per input channel ``s = max|x|^alpha / max|W|^(1-alpha)``
    (activation maxima from ``calibration``; query/key/value of a layer share one ``s``), ``W *= s`` and the
    module becomes a ``SmoothedLinear`` dividing its input by ``s``. Returns the new Linear names."""
    _check_alpha(alpha)
    if not calibration:
        raise DataError("smoothing needs calibration batches (representative text, not the evaluation text)")
    modules = dict(model.named_modules())
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for ids, mask in calibration:
            model(ids.to(device), mask.to(device))
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    for n in names:  # query/key/value read the same tensor: one shared scale keeps one quantization
        key = re.sub(r"\.(query|key|value)$", ".qkv", n)
        groups.setdefault(key, []).append(n)
    new = []
    for group in groups.values():
        w_max = torch.stack([modules[n].weight.abs().amax(0) for n in group]).amax(0)
        scale = (amax[group[0]].clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        inv = (1.0 / scale).to(modules[group[0]].weight.dtype)
        for n in group:
            lin = modules[n]
            lin.weight.mul_(scale)
            parent_name, _, child = n.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, SmoothedLinear(lin, inv))
            new.append(f"{n}.linear")
    return new


def check_pair(ids: Any, mask: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` as int64, or a DataError naming ``what``."""
    if not (isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)):
        raise DataError(f"{what}: expected (input_ids, attention_mask) tensors, got "
                        f"({type(ids).__name__}, {type(mask).__name__})")
    if ids.dim() != 2 or ids.shape != mask.shape or ids.numel() == 0:
        raise DataError(f"{what}: input_ids and attention_mask must be non-empty [batch, seq] tensors of the "
                        f"same shape, got {tuple(ids.shape)} and {tuple(mask.shape)}")
    if ids.dtype not in (torch.int64, torch.int32) or mask.dtype not in (torch.int64, torch.int32):
        raise DataError(f"{what}: input_ids and attention_mask must be integer tensors, got {ids.dtype} and "
                        f"{mask.dtype}")
    return ids.to(torch.int64), mask.to(torch.int64)


def calibration_pairs(calibration: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Checked ``(input_ids, attention_mask)`` calibration batches."""
    out = []
    for i, batch in enumerate(calibration):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError("each calibration batch must be an (input_ids, attention_mask) pair")
        out.append(check_pair(batch[0], batch[1], f"calibration batch {i}"))
    return out


def check_finite(encoder: nn.Module) -> None:
    """ModelError naming the first parameter with NaN or infinite values."""
    bad = [n for n, p in encoder.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ModelError(f"{type(encoder).__name__}: {bad[0]} has NaN or infinite values")


def default_weight_bits(weight_bits: int | None) -> int:
    """``weight_bits`` checked; None = 8 on CPUs with VNNI, else 7 (AVX2's int16 pair sums saturate)."""
    if weight_bits is None:
        from deepshrink.quantize.backends.onnxruntime import cpu_has_vnni

        return 8 if cpu_has_vnni() else 7
    return _check_bits(weight_bits)


def float_copy(encoder: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (the caller's model is never modified)."""
    model = copy.deepcopy(encoder).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


NEED_CALIBRATION = "static inputs need calibration batches (representative text, not the evaluation text)"


def _check_percentile(percentile: Any) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50 < percentile <= 100:
        raise ConfigError(f"percentile must be a number in (50, 100], got {percentile!r}")
    return float(percentile)


@torch.no_grad()
def calibrate_static(model: nn.Module, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], names: Sequence[str],
                     percentile: float = 100.0) -> None:
    """Make the named ``Int8Linear`` layers quantize their input to uint8 with one calibrated range (in place).

    The model runs the ``calibration`` batches once as it is (in ``quantize_int8``: every layer int8 with
    per-token inputs, so a range is measured behind int8 layers, though not behind the other static ones);
    per layer and batch, the ``100 - percentile`` and ``percentile`` percentiles of the (SmoothQuant-divided)
    input over the real tokens (100: the exact smallest and largest value), widened to hold 0, then the widest
    over all batches give ``s = (hi - lo) / 255`` and ``zero_point = round(-lo / s)``. Batches without a real
    token are skipped."""
    percentile = _check_percentile(percentile)
    batches = calibration_pairs(calibration)
    if not batches:
        raise DataError(NEED_CALIBRATION)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError("calibrate_static: names must be a list of layer names, not a single string")
    modules = dict(model.named_modules())
    for n in names:
        if not isinstance(modules.get(n), Int8Linear):
            raise ModelError(f"calibrate_static: {n!r} is not an Int8Linear layer of the model")
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    tokens: list[torch.Tensor] = []
    sample = torch.Generator().manual_seed(0)

    def hook(name: str) -> Any:
        def record(m: Int8Linear, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            if m.inv_scale is not None:
                x = x * m.inv_scale
            rows = x.reshape(-1, x.shape[-1])
            if tokens and tokens[0].numel() == rows.shape[0]:
                rows = rows[tokens[0]]
            v = rows.reshape(-1)
            if v.numel() == 0:
                return
            if percentile == 100.0:
                low, high = (float(t) for t in torch.aminmax(v))
            else:
                if v.numel() > 2**24:  # torch.quantile's limit: a uniform random sample of every channel
                    v = v[torch.randint(v.numel(), (2**24,), generator=sample).to(v.device)]
                q = torch.quantile(v, torch.tensor([1 - percentile / 100, percentile / 100], device=v.device))
                low, high = float(q[0]), float(q[1])
            lo[name] = min(lo.get(name, 0.0), low)
            hi[name] = max(hi.get(name, 0.0), high)
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for ids, mask in batches:
            tokens[:] = [mask.reshape(-1).to(device) != 0]
            model(ids.to(device), mask.to(device))
    finally:
        for h in handles:
            h.remove()
    for n in names:
        if n not in hi:
            raise DataError(f"calibrate_static: no calibration batch with a real token (mask 1) reached {n!r}")
        step = max(hi[n] - lo[n], 1e-8) / 255.0
        zero = min(max(round(-lo[n] / step), 0), 255)
        m = modules[n]
        m.act_qparams = torch.tensor([step, float(zero)], device=m.codes.device)


def quantize_int8(encoder: nn.Module, *, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                  smooth: float | None = None, weight_bits: int | None = None, skip: Sequence[str] = (),
                  static_inputs: Sequence[str] = (), percentile: float = 100.0) -> nn.Module:
    """Copy of a float ``encoder`` whose Linears are ``Int8Linear`` (per-token int8 activations, per-row
    ``weight_bits`` codes; the encoder itself is not modified).

    ``smooth``: SmoothQuant strength alpha (e.g. 0.5), per-channel activation maxima measured on
    ``calibration`` (``(input_ids, attention_mask)`` batches of training text, never the evaluation text);
    folded into the codes, the input divisor kept as each layer's ``inv_scale``. ``weight_bits``: 7
    (default on CPUs without VNNI, where oneDNN's int16 pair sums saturate with 8-bit weights) or 8.
    ``skip``: regexes of Linear names kept fp32 (e.g. ``[FFN_OUT]``). ``static_inputs``: regexes of
    quantized Linears whose input is uint8 with one range calibrated on ``calibration`` instead of a scale
    per token (``calibrate_static``; ``[LN_INPUTS]``: the Linears that read a LayerNorm output); compiled,
    their quantization fuses into the LayerNorm before them and their bias and GELU into the oneDNN kernel.
    ``percentile``: where their range is clipped; 100 (the default) keeps the largest value, as a clipped
    range cuts BERT's outlier channels (MiniLM, 128 sentences: 99.99 gave cosine 0.96). Save the result with
    ``deepshrink.save`` (codes entropy-coded) and run it eagerly or through ``compile_int8``."""
    if not isinstance(encoder, nn.Module):
        raise ModelError(f"quantize_int8 needs a float nn.Module encoder, got {type(encoder).__name__}")
    if int8_linear_names(encoder):
        raise ModelError(f"{type(encoder).__name__} already holds Int8Linear layers: quantize the float model")
    batches = calibration_pairs(calibration)
    if smooth is not None:
        _check_alpha(smooth)
        if not batches:
            raise DataError("smoothing needs calibration batches (representative text, not the evaluation text)")
    percentile = _check_percentile(percentile)
    bits = default_weight_bits(weight_bits)
    check_finite(encoder)
    quantized, _ = linear_names(encoder, skip)
    static = _static_names(quantized, static_inputs)
    if static and not batches:
        raise DataError(NEED_CALIBRATION)
    model = float_copy(encoder)
    if smooth is not None:
        smooth_linears(model, batches, quantized, smooth)
    modules = dict(model.named_modules())
    for name in quantized:
        m = modules[name]
        lin, inv = (m.linear, m.inv_scale) if isinstance(m, SmoothedLinear) else (m, None)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, Int8Linear.from_float(lin, bits, inv))
    if static:
        calibrate_static(model, batches, static, percentile)
    return model


def _static_names(quantized: list[str], patterns: Sequence[str]) -> list[str]:
    """The quantized Linears that ``static_inputs`` patterns name; ConfigError for a pattern naming none."""
    compiled = _patterns(patterns, "static_inputs")
    for p in compiled:
        if not any(p.search(n) for n in quantized):
            raise ConfigError(f"static_inputs pattern {p.pattern!r} matches no quantized Linear layer "
                              f"(e.g. {quantized[0]!r})")
    return [n for n in quantized if any(p.search(n) for p in compiled)]


__all__ = ["FFN_OUT", "LN_INPUTS", "Int8Linear", "SmoothedLinear", "calibrate_static",
           "install_int8_record", "int8_linear_names", "int8_record",
           "linear_names", "per_token_int8", "quantize_int8", "smooth_linears"]
