"""int8 BERT-family sentence encoders compiled by Inductor (oneDNN int8 Linear kernels).

``compile_int8(encoder, example)`` quantizes the encoder's Linear layers to per-channel int8 weights and
compiles it with weight freezing for ``example``'s batch size and a few sequence lengths, so every quantized
Linear runs oneDNN's ``qlinear_pointwise`` kernel and LayerNorm, attention and the activation quantization are fused
C++ loops. Activations are quantized per call, one int8 scale per token (torchao's dynamic
``Int8DynamicActivationInt8WeightConfig``, the default), or as uint8 with one range per call or a
calibrated range (torch.export + torchao's X86InductorQuantizer, ``deepshrink.quantize.backends.inductor``).
``skip`` keeps Linear layers in fp32 (regexes on module names; ``FFN_OUT`` = every FFN down-projection,
whose GELU inputs have outliers).

A model from ``quantize_int8`` (``Int8Linear`` layers, e.g. loaded with ``deepshrink.load``) is compiled
with its stored codes and scales as the int8 weights: nothing is re-quantized or re-smoothed.

Each compiled graph has static shapes: ``CompiledEncoder`` sorts the rows by length, cuts them into chunks
of the compiled batch size and runs each chunk at the shortest compiled sequence length (``lengths``) that
holds it, so padding costs little; all-padding columns are cut, shorter chunks padded (mask 0). Needs
torchao and a C++ compiler (compiling MiniLM took 16-25 s per length on a quiet 2-core machine,
benchmarks/results/minilm.md). See docs/transformers.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.transformers.int8 import (
    FFN_OUT, Int8Linear, SmoothedLinear, _patterns, calibration_pairs, check_finite, check_pair, default_weight_bits,
    float_copy, int8_linear_names, linear_names, quantize_int8, smooth_linears,
)


def padded_extent(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, one past the last position with a non-zero mask (0 for an all-padding row): the columns
    after it hold only padding, which the encoder ignores, so they can be cut without changing the row."""
    positions = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
    return (positions * (attention_mask != 0)).amax(dim=-1)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` without the trailing columns that are padding in every row (at least one
    column kept). For a BERT encoder with mean pooling the embeddings do not change: what padding to the
    batch's longest sentence (``tokenizer(..., padding=True)``) gives instead of a fixed length."""
    keep = max(int(padded_extent(attention_mask).max()), 1)
    return input_ids[:, :keep], attention_mask[:, :keep]


def default_lengths(seq_len: int) -> tuple[int, ...]:
    """The sequence lengths a compiled encoder runs at by default: powers of two from 16, then ``seq_len``."""
    return tuple(sorted({n for n in (16, 32, 64, 128, 256) if n < seq_len} | {seq_len}))


class CompiledEncoder(nn.Module):
    """``(input_ids, attention_mask) -> embeddings`` through graphs compiled for one batch size and a few
    sequence lengths (``lengths``, the longest = the example's).

    Rows are sorted by their real length (``padded_extent``) and cut into chunks of the compiled batch size;
    each chunk runs at the shortest compiled length that holds its longest sentence, its columns padded (id
    ``pad_id``, mask 0) or cut (all-padding columns only), so short sentences do not pay for padding. A length
    not yet used is compiled at its first use (seconds; ``warm()`` compiles them all now); the last chunk is
    filled with copies of its first row, dropped from the output; rows come back in input order. Longer
    sequences are refused. Inference only."""

    def __init__(self, compiled: Any, batch_size: int, seq_len: int, pad_id: int, *, quantized: list[str],
                 skipped: list[str], activations: str, smooth: float | None = None,
                 lengths: Sequence[int] = (), threads: int | None = None,
                 device: torch.device | str | None = None, vocab: int | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no mode switching, no state_dict
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.quantized, self.skipped, self.activations, self.smooth = quantized, skipped, activations, smooth
        self.lengths = tuple(sorted(set(lengths) | {seq_len}))
        self.threads = threads or torch.get_num_threads()  # every length's kernels get the first one's count
        self.compiled_lengths: set[int] = {seq_len}
        self._refused: dict[int, str] = {}  # length -> why its compile was refused (Dynamo keeps the graph)
        self.device = torch.device(device or "cpu")  # the example's: lengths compiled by ``warm()`` run there
        self.training = False
        self.vocab = vocab  # token ids must be below it (the compiled lookup does not check)

    deepshrink_runtime = "inductor"  # compiled code: no file form (``deepshrink.save``, ``export_model`` refuse it)

    def train(self, mode: bool = True) -> CompiledEncoder:
        if mode:
            raise ModelError("a compiled int8 encoder is for inference only; fine-tune the float model instead")
        return self

    def warm(self) -> CompiledEncoder:
        """Compile every length in ``lengths`` now (each takes seconds the first time it is used otherwise)."""
        for length in self.lengths:
            self._ensure(length)
        return self

    def _ensure(self, length: int, device: torch.device | None = None) -> None:
        if length in self.compiled_lengths:
            return
        if length in self._refused:  # a second call would hit Dynamo's cached graph and capture no code to check
            raise ModelError(self._refused[length])
        from deepshrink.quantize.backends.inductor import warm_frozen

        with torch.inference_mode(False):  # normal tensors, as ``forward`` passes (see there)
            ids = torch.full((self.batch_size, length), self.pad_id, dtype=torch.int64,
                             device=device or self.device)
            mask = torch.ones_like(ids)
        try:
            warm_frozen(self._compiled, (ids, mask), self.threads)
        except ModelError as exc:
            self._refused[length] = str(exc)
            raise
        self.compiled_lengths.add(length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = check_pair(input_ids, attention_mask, "input")
        if self.vocab is not None:
            from deepshrink.transformers.model import check_token_ids

            check_token_ids(ids, self.vocab)
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
            extent = padded_extent(mask)
            order = torch.argsort(extent, descending=True, stable=True) if len(self.lengths) > 1 else None
            if order is not None:
                ids, mask, extent = ids[order], mask[order], extent[order]
            longest = extent.tolist()  # one host copy, not one per chunk
            for start in range(0, n, b):
                i, m = ids[start:start + b], mask[start:start + b]
                need = max(max(longest[start:start + b]), 1)  # one compiled length: always chosen
                target = next(x for x in self.lengths if x >= need)
                if target < i.shape[1]:
                    i, m = i[:, :target], m[:, :target]
                elif target > i.shape[1]:
                    i = nn.functional.pad(i, (0, target - i.shape[1]), value=self.pad_id)
                    m = nn.functional.pad(m, (0, target - m.shape[1]), value=0)
                k = len(i)
                if k < b:
                    i = torch.cat([i, i[:1].expand(b - k, -1)])
                    m = torch.cat([m, m[:1].expand(b - k, -1)])
                chunks.append((i.clone(), m.clone(), k, target))
        for i, _, _, target in chunks:
            self._ensure(target, i.device)
        with torch.inference_mode():
            outs = [self._compiled(i, m)[:k] for i, m, k, _ in chunks]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if order is not None:
            out = out[torch.argsort(order)]
        return out


ACTIVATIONS = ("per-token", "per-tensor", "static")


def compile_int8(encoder: nn.Module, example: tuple[torch.Tensor, torch.Tensor], *, skip: Sequence[str] = (),
                 activations: str = "per-token", calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                 smooth: float | None = None, reduce_range: bool = False, weight_bits: int | None = None,
                 threads: int | None = None, lengths: Sequence[int] | None = None,
                 static_inputs: Sequence[str] = ()) -> CompiledEncoder:
    """int8 copy of ``encoder`` compiled for ``example``'s batch size and lengths up to its sequence length
    (``(input_ids, attention_mask)``, e.g.
    ``tokenize(tok, sentences, pad_to=128)``); the encoder itself is not modified.

    A float encoder is quantized here. ``skip``: regexes of Linear names kept fp32 (e.g. ``[FFN_OUT]``).
    ``activations``: how the Linear inputs are quantized -- ``per-token`` (default; int8 with one scale per
    token computed per call, torchao's ``Int8DynamicActivationInt8WeightConfig``, so a token's result does
    not depend on the padding or the rest of the batch; the model goes through ``quantize_int8``),
    ``per-tensor`` (uint8, one range per call, X86InductorQuantizer dynamic) or ``static`` (uint8 ranges
    calibrated on ``calibration`` batches of the example's shape). ``weight_bits=7`` (default on CPUs
    without VNNI) keeps AVX2's int16 pair sums (``vpmaddubsw``) from saturating: measured on MiniLM, 8-bit
    weights there lose accuracy to saturation, most with smoothing; ``reduce_range`` (7-bit uint8
    activations, uint8 schemes only) is the other remedy, measured worse. ``smooth``: SmoothQuant strength
    alpha (e.g. 0.5) for the per-token scheme, per-channel activation maxima measured on ``calibration``
    (any padding; use training text, not the evaluation text). ``threads``: the kernels' thread count,
    fixed at compile time. ``lengths``: the sequence lengths the per-token scheme runs at (None: powers of two
    from 16 below the example's length, and that length, which is always included; ``[example length]``: one
    static shape, as the uint8 schemes, whose exported graph has the example's shape): each batch runs at the
    shortest one that holds its longest sentence, compiled when first needed (``CompiledEncoder.warm()``
    compiles them all).

    ``static_inputs`` (per-token scheme): regexes of Linears whose input gets one calibrated uint8 range
    instead of a scale per token (``quantize_int8``; e.g. ``[LN_INPUTS]``), from ``calibration``.

    An encoder that already holds ``Int8Linear`` layers (``quantize_int8``, or ``deepshrink.load`` of its
    artifact) is compiled with exactly its codes and scales (per-token activations); its float Linears stay
    fp32, and ``smooth``, a different ``weight_bits`` or a ``skip`` pattern naming an Int8Linear is a
    ConfigError (they were fixed when it was quantized).
    """
    from deepshrink.quantize.backends.inductor import _check_positive, compile_pt2e

    if not isinstance(encoder, nn.Module):
        raise ModelError(f"compile_int8 needs an nn.Module encoder, got {type(encoder).__name__}")
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    dynamic = activations != "static"
    if not isinstance(example, (tuple, list)) or len(example) != 2:
        raise DataError("example must be an (input_ids, attention_mask) pair, e.g. tokenize(tok, s, pad_to=128)")
    ids, mask = check_pair(*example, "example")
    batches = calibration_pairs(calibration)
    _check_positive(threads=threads)
    lengths = _check_lengths(lengths, ids.shape[1], activations)
    pad_id = int(getattr(getattr(encoder, "config", None), "pad_token_id", None) or 0)
    token_map = getattr(encoder, "token_map", None)
    vocab = len(token_map) if token_map is not None else getattr(getattr(encoder, "config", None), "vocab_size", None)
    held = int8_linear_names(encoder)
    if held:
        if static_inputs:
            raise ConfigError(f"{type(encoder).__name__} holds Int8Linear layers (quantize_int8): static_inputs "
                              "were fixed when it was quantized")
        skipped = _check_held(encoder, held, activations, smooth, reduce_range, weight_bits, skip)
        check_finite(encoder)
        compiled = compile_int8_linears(float_copy(encoder), (ids, mask), threads)
        return CompiledEncoder(compiled, ids.shape[0], ids.shape[1], pad_id, quantized=held, skipped=skipped,
                               activations=activations, smooth=None, lengths=lengths, threads=threads,
                               device=ids.device, vocab=vocab)
    if not dynamic and not batches:
        raise DataError("static int8 needs calibration batches")
    if smooth is not None and activations != "per-token":
        raise ConfigError("smooth applies to the per-token scheme")
    if static_inputs and activations != "per-token":
        raise ConfigError("static_inputs applies to the per-token scheme (activations='static' makes every input "
                          "static)")
    for i, (b_ids, _) in enumerate(batches if activations == "static" else []):
        if b_ids.shape != ids.shape:
            raise DataError(f"calibration batch {i} has shape {tuple(b_ids.shape)}, the example "
                            f"{tuple(ids.shape)}: pad them alike (tokenize(..., pad_to=...))")
    check_finite(encoder)
    if activations == "per-token" and reduce_range:
        raise ConfigError("reduce_range applies to the per-tensor and static schemes (use weight_bits=7)")
    weight_bits = default_weight_bits(weight_bits)
    quantized, skipped = linear_names(encoder, skip)
    if activations == "per-token":
        model = quantize_int8(encoder, calibration=batches, smooth=smooth, weight_bits=weight_bits, skip=skip,
                              static_inputs=static_inputs)
        compiled = compile_int8_linears(model, (ids, mask), threads)
    else:
        compiled = compile_pt2e(float_copy(encoder), (ids, mask), batches, dynamic=dynamic,
                                reduce_range=reduce_range, weight_bits=weight_bits, skip=skipped, threads=threads)
    return CompiledEncoder(compiled, ids.shape[0], ids.shape[1], pad_id, quantized=quantized,
                           skipped=skipped, activations=activations, smooth=smooth, lengths=lengths,
                           threads=threads, device=ids.device, vocab=vocab)


def _check_lengths(lengths: Sequence[int] | None, seq_len: int, activations: str) -> tuple[int, ...]:
    """The compiled sequence lengths, validated (ConfigError naming the bad value)."""
    if lengths is None:
        return default_lengths(seq_len) if activations == "per-token" else (seq_len,)
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
        raise ConfigError(f"lengths must be a non-empty list of sequence lengths, got {lengths!r}")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= seq_len:
            raise ConfigError(f"lengths: {n!r} is not a sequence length between 1 and the example's {seq_len}")
    out = tuple(sorted(set(lengths) | {seq_len}))
    if len(out) > 1 and activations != "per-token":
        raise ConfigError(f"lengths {list(out)}: the {activations!r} scheme's exported graph has the example's "
                          f"length only; pass lengths=[{seq_len}] or use per-token activations")
    if len(out) > 16:
        raise ConfigError(f"lengths: {len(out)} lengths, at most 16 (each is a compiled graph)")
    return out


def _check_held(encoder: nn.Module, held: list[str], activations: str, smooth: float | None, reduce_range: bool,
                weight_bits: int | None, skip: Sequence[str]) -> list[str]:
    """ConfigError for settings that contradict a model's Int8Linear layers; returns its float Linears."""
    what = f"{type(encoder).__name__} holds Int8Linear layers (quantize_int8)"
    if activations != "per-token":
        raise ConfigError(f"{what}: they run per-token int8 activations, not {activations!r}")
    if smooth is not None:
        raise ConfigError(f"{what}: SmoothQuant is already folded into them; pass smooth=None "
                          "(or quantize the float model with quantize_int8(..., smooth=...))")
    if reduce_range:
        raise ConfigError("reduce_range applies to the per-tensor and static schemes (use weight_bits=7)")
    modules = dict(encoder.named_modules())
    bits = sorted({modules[n].bits for n in held})
    if weight_bits is not None and bits != [weight_bits]:
        raise ConfigError(f"{what} with {'/'.join(map(str, bits))}-bit codes: weight_bits={weight_bits!r} "
                          "contradicts them (pass None)")
    floats = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    for p in _patterns(skip):
        hit = [n for n in held if p.search(n)]
        if hit:
            raise ConfigError(f"skip pattern {p.pattern!r} names {hit[0]!r}, already an Int8Linear: skip Linears "
                              "when quantizing (quantize_int8(..., skip=...))")
        if not any(p.search(n) for n in floats):
            raise ConfigError(f"skip pattern {p.pattern!r} matches no Linear layer (e.g. {held[0]!r})")
    return floats


class StaticInt8Linear(nn.Module):
    """An ``Int8Linear`` with a static input range as the pt2e reference pattern (``quantize_per_tensor`` /
    ``dequantize_per_tensor`` of the input, ``dequantize_per_channel`` of the int8 codes, ``linear``), which
    Inductor's freezing passes lower to one oneDNN ``qlinear_pointwise`` (bias and a following GELU fused),
    with the quantization fused into the kernel that made the input. Compile-only: its maths are
    ``Int8Linear``'s static path."""

    def __init__(self, q: Int8Linear, inv_scale: torch.Tensor | None) -> None:
        super().__init__()
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

        from deepshrink.transformers.int8 import static_qparams

        self.register_buffer("codes", q.codes.detach().clone())
        self.register_buffer("scale", q.scale.detach().clone())
        self.register_buffer("zeros", torch.zeros(q.out_features, dtype=torch.int64, device=q.codes.device))
        self.register_buffer("bias", None if q.bias is None else q.bias.detach().clone())
        self.inv_scale = inv_scale  # one tensor per distinct divisor: query/key/value share one quantization
        self.step, self.zero = static_qparams(q.act_qparams)
        self.qmin, self.qmax = -(2 ** (q.bits - 1)), 2 ** (q.bits - 1) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        if self.inv_scale is not None:
            x = x * self.inv_scale
        xq = qd.quantize_per_tensor.default(x, self.step, self.zero, 0, 255, torch.uint8)
        xd = qd.dequantize_per_tensor.default(xq, self.step, self.zero, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel.default(self.codes, self.scale, self.zeros, 0, self.qmin, self.qmax,
                                              torch.int8)
        return nn.functional.linear(xd, w, self.bias)


def compile_int8_linears(model: nn.Module, example: tuple[torch.Tensor, ...], threads: int | None) -> Any:
    """Compile (in place) a model's ``Int8Linear`` layers as torchao int8 weights + per-token dynamic int8
    activations (static-input layers as ``StaticInt8Linear``), with freezing (Inductor lowers both patterns to
    oneDNN ``qlinear_pointwise``), on one call with ``example``. Each layer's ``codes`` and ``scale`` become
    the ``Int8Tensor``'s ``qdata`` and ``scale`` exactly; a SmoothQuant divisor becomes a ``SmoothedLinear`` multiply, one tensor per distinct
    divisor so query/key/value share one fused quantization."""
    import warnings

    from deepshrink.quantize.backends.inductor import _check_positive, _needs, compile_frozen

    _check_positive(threads=threads)
    _needs()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    modules = dict(model.named_modules())
    layers: dict[str, Int8Linear] = {n: m for n, m in modules.items() if isinstance(m, Int8Linear)}
    if not layers:
        raise ModelError(f"{type(model).__name__} has no Int8Linear layer to compile")
    shared: dict[tuple[int, bytes], torch.Tensor] = {}

    def one(inv: torch.Tensor) -> torch.Tensor:
        key = (inv.numel(), inv.detach().cpu().numpy().tobytes())
        return shared.setdefault(key, inv.detach().clone())

    static = {n: q for n, q in layers.items() if q.act_qparams is not None}
    for name, q in static.items():
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child,
                StaticInt8Linear(q, None if q.inv_scale is None else one(q.inv_scale)))
    layers = {n: q for n, q in layers.items() if n not in static}
    with torch.no_grad():
        for name, q in layers.items():  # float placeholders, quantized by torchao below
            lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
            lin.weight.copy_(q.weight_float())
            if q.bias is not None:
                lin.bias.copy_(q.bias)
            lin.requires_grad_(False)
            parent, _, child = name.rpartition(".")
            setattr(modules[parent] if parent else model, child, lin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in layers)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, q in layers.items():  # torchao's Int8Tensor: int8 ``qdata`` [out, in], ``scale`` [out, 1]
                lin = modules[name]
                w = lin.weight
                w.qdata.copy_(q.codes)
                w.scale.copy_(q.scale.reshape(w.scale.shape).to(w.scale.dtype))
                if q.inv_scale is not None:
                    parent, _, child = name.rpartition(".")
                    setattr(modules[parent] if parent else model, child, SmoothedLinear(lin, one(q.inv_scale)))
        return compile_frozen(model, example, threads, dynamic=False)


__all__ = ["ACTIVATIONS", "FFN_OUT", "CompiledEncoder", "SmoothedLinear", "StaticInt8Linear", "compile_int8",
           "compile_int8_linears", "default_lengths", "linear_names", "padded_extent", "quantize_int8", "smooth_linears", "trim_padding"]
