"""int8 BERT-family sentence encoders compiled by Inductor (oneDNN int8 Linear kernels).

``compile_int8(encoder, example)`` quantizes the encoder's Linear layers to per-channel int8 weights and
compiles it with weight freezing for ``example``'s (batch, sequence) shape, so every quantized Linear runs
oneDNN's ``qlinear_pointwise`` kernel and LayerNorm, attention and the activation quantization are fused
C++ loops. Activations are quantized per call, one int8 scale per token (torchao's dynamic
``Int8DynamicActivationInt8WeightConfig``, the default), or as uint8 with one range per call or a
calibrated range (torch.export + torchao's X86InductorQuantizer, ``deepshrink.quantize.backends.inductor``).
``skip`` keeps Linear layers in fp32 (regexes on module names; ``FFN_OUT`` = every FFN down-projection,
whose GELU inputs have outliers).

The compiled graph has static shapes: ``CompiledEncoder`` pads shorter sequences (mask 0) and cuts
batches into chunks of the compiled batch size. Needs torchao and a C++ compiler (compiling MiniLM took
18-23 s on a quiet 2-core machine in benchmarks/results/minilm.md). See docs/transformers.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError

# every FFN down-projection (``bert.encoder.layer.<i>.output.dense``)
FFN_OUT = r"encoder\.layer\.\d+\.output\.dense$"


class CompiledEncoder(nn.Module):
    """``(input_ids, attention_mask) -> embeddings`` through a graph compiled for one (batch, seq) shape.

    Shorter sequences are padded (id ``pad_id``, mask 0), longer ones refused; a batch of another size is
    cut into chunks of the compiled size, the last one filled with copies of its first row that are
    dropped from the output. Inference only."""

    def __init__(self, compiled: Any, batch_size: int, seq_len: int, pad_id: int, *, quantized: list[str],
                 skipped: list[str], activations: str, smooth: float | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no mode switching, no state_dict
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.quantized, self.skipped, self.activations, self.smooth = quantized, skipped, activations, smooth

    def train(self, mode: bool = True) -> CompiledEncoder:
        if mode:
            raise ModelError("a compiled int8 encoder is for inference only; fine-tune the float model instead")
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = _check_pair(input_ids, attention_mask, "input")
        n, length = ids.shape
        if length > self.seq_len:
            raise ConfigError(f"sequence length {length} is over the compiled length {self.seq_len}; "
                              "truncate when tokenizing or compile for a longer example")
        b = self.batch_size
        # inputs as at compile time (normal tensors, not inference tensors made under inference_mode): a
        # different kind, or another grad mode, would make Dynamo recompile the graph without the freezing
        # that turns it into int8 kernels
        chunks = []
        with torch.inference_mode(False):
            ids, mask = ids.clone(), mask.clone()
            if length < self.seq_len:
                ids = nn.functional.pad(ids, (0, self.seq_len - length), value=self.pad_id)
                mask = nn.functional.pad(mask, (0, self.seq_len - length), value=0)
            for start in range(0, n, b):
                i, m = ids[start:start + b], mask[start:start + b]
                k = len(i)
                if k < b:
                    i = torch.cat([i, i[:1].expand(b - k, -1)])
                    m = torch.cat([m, m[:1].expand(b - k, -1)])
                chunks.append((i, m, k))
        with torch.inference_mode():
            outs = [self._compiled(i, m)[:k] for i, m, k in chunks]
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _check_pair(ids: Any, mask: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
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


def linear_names(encoder: nn.Module, skip: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(quantized, skipped) names of the encoder's ``nn.Linear`` modules; ``skip`` are regexes searched in
    the names. ConfigError on a bad regex or a pattern that matches no Linear (a typo would silently
    quantize everything)."""
    if isinstance(skip, str):
        raise ConfigError("skip must be a list of regexes, not a single string")
    try:
        patterns = [re.compile(p) for p in skip]
    except (re.error, TypeError) as exc:
        raise ConfigError(f"skip: bad regex: {exc}") from None
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


ACTIVATIONS = ("per-token", "per-tensor", "static")


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


@torch.no_grad()
def smooth_linears(model: nn.Module, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], names: Sequence[str],
                   alpha: float = 0.5) -> list[str]:
    """SmoothQuant in place: for each named Linear, per input channel ``s = max|x|^alpha / max|W|^(1-alpha)``
    (activation maxima from ``calibration``; query/key/value of a layer share one ``s``), ``W *= s`` and the
    module becomes a ``SmoothedLinear`` dividing its input by ``s``. Returns the new Linear names."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"smooth alpha must be a number in (0, 1), got {alpha!r}")
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
    try:
        for ids, mask in calibration:
            model(ids, mask)
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


def compile_int8(encoder: nn.Module, example: tuple[torch.Tensor, torch.Tensor], *, skip: Sequence[str] = (),
                 activations: str = "per-token", calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                 smooth: float | None = None, reduce_range: bool = False, weight_bits: int | None = None,
                 threads: int | None = None) -> CompiledEncoder:
    """int8 copy of a float ``encoder`` compiled for ``example``'s shape (``(input_ids, attention_mask)``,
    e.g. ``tokenize(tok, sentences, pad_to=128)``); the encoder itself is not modified.

    ``skip``: regexes of Linear names kept fp32 (e.g. ``[FFN_OUT]``). ``activations``: how the Linear
    inputs are quantized -- ``per-token`` (default; int8 with one scale per token computed per call,
    torchao's ``Int8DynamicActivationInt8WeightConfig``, so a token's result does not depend on the
    padding or the rest of the batch), ``per-tensor`` (uint8, one range per call, X86InductorQuantizer
    dynamic) or ``static`` (uint8 ranges calibrated on ``calibration`` batches of the example's shape).
    ``weight_bits=7`` (default on CPUs without VNNI) keeps AVX2's int16 pair sums (``vpmaddubsw``) from
    saturating: measured on MiniLM, 8-bit weights there lose accuracy to saturation, most with smoothing;
    ``reduce_range`` (7-bit uint8 activations, uint8 schemes only) is the other remedy, measured worse.
    ``smooth``: SmoothQuant strength alpha (e.g. 0.5) for the per-token scheme, per-channel activation
    maxima measured on ``calibration`` (any padding; use training text, not the evaluation text).
    ``threads``: the kernels' thread count, fixed at compile time.
    """
    from deepshrink.quantize.backends.inductor import compile_pt2e

    if not isinstance(encoder, nn.Module):
        raise ModelError(f"compile_int8 needs a float nn.Module encoder, got {type(encoder).__name__}")
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    dynamic = activations != "static"
    if not isinstance(example, (tuple, list)) or len(example) != 2:
        raise DataError("example must be an (input_ids, attention_mask) pair, e.g. tokenize(tok, s, pad_to=128)")
    ids, mask = _check_pair(*example, "example")
    batches = [_check_pair(*_pair(b), f"calibration batch {i}") for i, b in enumerate(calibration)]
    if not dynamic and not batches:
        raise DataError("static int8 needs calibration batches")
    if smooth is not None and activations != "per-token":
        raise ConfigError("smooth applies to the per-token scheme")
    for i, (b_ids, _) in enumerate(batches if activations == "static" else []):
        if b_ids.shape != ids.shape:
            raise DataError(f"calibration batch {i} has shape {tuple(b_ids.shape)}, the example "
                            f"{tuple(ids.shape)}: pad them alike (tokenize(..., pad_to=...))")
    bad = [n for n, p in encoder.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ModelError(f"{type(encoder).__name__}: {bad[0]} has NaN or infinite values")
    if activations == "per-token" and reduce_range:
        raise ConfigError("reduce_range applies to the per-tensor and static schemes (use weight_bits=7)")
    if weight_bits is None:
        from deepshrink.quantize.backends.onnxruntime import cpu_has_vnni

        weight_bits = 8 if cpu_has_vnni() else 7
    if weight_bits not in (7, 8):
        raise ConfigError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    quantized, skipped = linear_names(encoder, skip)
    pad_id = getattr(getattr(encoder, "config", None), "pad_token_id", None)
    model = _float_copy(encoder)
    if activations == "per-token":
        names = smooth_linears(model, batches, quantized, smooth) if smooth is not None else quantized
        compiled = _compile_per_token(model, (ids, mask), set(names), threads, weight_bits)
    else:
        compiled = compile_pt2e(model, (ids, mask), batches, dynamic=dynamic, reduce_range=reduce_range,
                                weight_bits=weight_bits, skip=skipped, threads=threads)
    return CompiledEncoder(compiled, ids.shape[0], ids.shape[1], int(pad_id or 0), quantized=quantized,
                           skipped=skipped, activations=activations, smooth=smooth)


def _compile_per_token(model: nn.Module, example: tuple[torch.Tensor, ...], names: set[str],
                       threads: int | None, weight_bits: int = 8) -> Any:
    """torchao int8 weights + per-token dynamic int8 activations on the named Linears, compiled with
    freezing (Inductor lowers the pattern to oneDNN ``qlinear_pointwise``) on one call with ``example``.
    ``weight_bits`` 7: the weight codes are redone in [-64, 63] (scale ``max|w| / 63.5`` per row)."""
    import warnings

    from deepshrink.quantize.backends.inductor import _check_positive, _needs, compile_frozen

    _check_positive(threads=threads)
    _needs()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = dict(model.named_modules())
        floats = {n: modules[n].weight.detach().clone() for n in names} if weight_bits < 8 else {}
        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
        with torch.no_grad():
            for n, w in floats.items():  # torchao's Int8Tensor: int8 ``qdata`` [out, in], ``scale`` [out, 1]
                q = modules[n].weight
                scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / (2 ** (weight_bits - 1) - 0.5)
                q.qdata.copy_(torch.clamp(torch.round(w / scale), -(2 ** (weight_bits - 1)),
                                          2 ** (weight_bits - 1) - 1).to(torch.int8))
                q.scale.copy_(scale.reshape(q.scale.shape).to(q.scale.dtype))
        return compile_frozen(model, example, threads)


def _pair(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError("each calibration batch must be an (input_ids, attention_mask) pair")
    return batch[0], batch[1]


def _float_copy(encoder: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(encoder).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


__all__ = ["ACTIVATIONS", "FFN_OUT", "CompiledEncoder", "SmoothedLinear", "compile_int8", "linear_names",
           "smooth_linears"]
