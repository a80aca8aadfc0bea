"""Int8Linear layers with a static (calibrated) uint8 input range, ``quantize_int8(static_inputs=...)``: the
eager maths against an independent reference, which layers become static, the calibrated range, a bit-exact
artifact round trip, ONNX export as integer ops, the compiled kernels, and clear errors on bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.transformers import LN_INPUTS, compile_int8, tokenize
from deepshrink.transformers.int8 import Int8Linear, calibrate_static, install_int8_record, int8_record, quantize_int8

STATIC = ["attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense"]


def _static(tiny, tokenizer, sentences, **kw) -> nn.Module:
    calib = [tokenize(tokenizer, sentences[:3]), tokenize(tokenizer, sentences[3:])]
    return quantize_int8(tiny, calibration=calib, smooth=0.5, weight_bits=8, static_inputs=[LN_INPUTS],
                         **kw)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=-1).min())


def test_static_linear_matches_an_independent_reference() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    q = Int8Linear.from_float(lin, 8)
    q.act_qparams = torch.tensor([0.04, 120.0])  # the range [-4.8, 5.4]
    x = torch.randn(3, 5, 48)
    x[0, 0, 0] = 50.0  # beyond the range: saturates at 255
    with torch.no_grad():
        got = q(x)
    # written from the definitions: uint8 = clip(round(x / s) + zp, 0, 255), the product with the zero point
    # removed, summed in float64
    s = float(torch.tensor(0.04))  # the step as stored (float32)
    xq = (torch.round(x.double() / s) + 120).clamp(0, 255) - 120
    top = lin.weight.detach().abs().amax(1) / 127.5  # float32, as the codes are taken
    codes = torch.clamp(torch.round(lin.weight.detach() / top[:, None]), -128, 127).double()
    ref = (xq @ codes.T) * s * top.double() + lin.bias.detach().double()
    assert float((got.double() - ref).abs().max()) < 1e-4
    assert float(got[0, 0].double().sub(ref[0, 0]).abs().max()) < 1e-4  # the saturated token too
    with torch.no_grad():
        plain = nn.functional.linear(x, lin.weight, lin.bias)
    assert _cos(got[1:], plain[1:]) > 0.999


def test_ln_inputs_become_static_and_the_rest_stays_per_token(tiny, tokenizer, sentences) -> None:
    q = _static(tiny, tokenizer, sentences)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, Int8Linear)}
    static = sorted(n for n, m in layers.items() if m.act_qparams is not None)
    assert static == sorted(f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in STATIC)
    assert len(layers) == 12
    for n in static:
        step, zero = (float(v) for v in layers[n].act_qparams)
        assert step > 0 and zero == round(zero) and 0 <= zero <= 255
    # query/key/value read one tensor: one range, so the compiled graph quantizes it once
    qkv = [layers[f"bert.encoder.layer.0.attention.self.{s}"].act_qparams for s in ("query", "key", "value")]
    assert torch.equal(qkv[0], qkv[1]) and torch.equal(qkv[0], qkv[2])
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        assert _cos(q(ids, mask), tiny(ids, mask)) > 0.99


def test_the_range_is_the_calibrated_percentile_and_holds_zero(tiny, tokenizer, sentences) -> None:
    calib = [tokenize(tokenizer, sentences)]
    model = quantize_int8(tiny, calibration=calib, weight_bits=8)  # no smoothing: inputs as they are
    name = "bert.encoder.layer.1.intermediate.dense"
    seen: list[torch.Tensor] = []
    layer = dict(model.named_modules())[name]
    handle = layer.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        model(*calib[0])
    handle.remove()
    real = seen[0][calib[0][1] != 0]  # [tokens, in]: padding positions excluded
    calibrate_static(model, calib, [name], percentile=100.0)
    step, zero = (float(v) for v in layer.act_qparams)
    lo, hi = min(float(real.min()), 0.0), max(float(real.max()), 0.0)
    assert step == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zero == round(-lo / step)


class _TwoChannels(nn.Module):
    """A model of one static Int8Linear fed 2 channels made from the ids: ids / 1000, clipped to [-1, 1] in
    channel 0 and as they are in channel 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = Int8Linear.from_float(nn.Linear(2, 1), 8)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = ids.float() / 1000
        return self.lin(torch.stack([x.clamp(-1, 1), x], -1))


def test_an_unclipped_range_sees_every_value_of_a_huge_batch() -> None:
    n = 2**23 + 8  # 2^24 + 16 input values: more than torch.quantile takes
    ids = torch.randint(-1000, 1001, (1, n))
    ids[0, 12345] = 50_000  # one value of 50 in channel 1
    model = _TwoChannels()
    calibrate_static(model, [(ids, torch.ones_like(ids))], ["lin"])
    step, zero = (float(v) for v in model.lin.act_qparams)
    assert step == pytest.approx(51 / 255, rel=1e-6) and zero == round(1 / step)


def test_batches_without_a_real_token_are_skipped(tiny, tokenizer, sentences) -> None:
    good = tokenize(tokenizer, sentences)
    empty = (good[0][:2], torch.zeros_like(good[1][:2]))
    q = quantize_int8(tiny, calibration=[good], weight_bits=8, static_inputs=[LN_INPUTS])
    q2 = quantize_int8(tiny, calibration=[empty, good], weight_bits=8, static_inputs=[LN_INPUTS])
    for (n, a), (_, b) in zip(sorted(q.state_dict().items()), sorted(q2.state_dict().items())):
        assert torch.equal(a, b), n
    with pytest.raises(DataError, match="no calibration batch with a real token"):
        quantize_int8(tiny, calibration=[empty], weight_bits=8, static_inputs=[LN_INPUTS])


def test_round_trip_is_bit_exact_and_the_record_marks_static_layers(tiny, tmp_path, tokenizer, sentences) -> None:
    q = _static(tiny, tokenizer, sentences)
    record = int8_record(q)
    assert sum(len(e) == 5 and e[4] is True for e in record) == 8
    assert sum(len(e) == 4 for e in record) == 4  # per-token layers keep the older four-entry form
    deepshrink.save(q, tmp_path / "q.dsa")
    back = deepshrink.load(tmp_path / "q.dsa")
    for (n, a), (_, b) in zip(sorted(q.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), n
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        assert torch.equal(q(ids, mask), back(ids, mask))


def test_static_layers_export_to_onnx_as_integer_ops(tiny, tmp_path, tokenizer, sentences) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from deepshrink.export import check_onnx, export_model
    from deepshrink.export.onnx import default_dynamic_axes

    q = _static(tiny, tokenizer, sentences)
    example = tokenize(tokenizer, sentences[:2])
    path = export_model(q, tmp_path / "q.onnx", "onnx", example,
                        dynamic_axes=default_dynamic_axes(example, 1, sequence=True))
    nodes = onnx.load(str(path)).graph.node
    assert [n.op_type for n in nodes].count("MatMulInteger") == 12
    # the static layers quantize with a scalar scale (no per-token ReduceMax): 4 per-token layers, 4 ReduceMax
    assert [n.op_type for n in nodes].count("ReduceMax") == 4
    # ONNX Runtime rounds x / s where PyTorch rounds x * (1 / s): a tie may land one code apart
    assert check_onnx(q, path, tokenize(tokenizer, sentences), rtol=0.0, atol=1e-3) <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("every", [False, True])
def test_compiled_static_layers_run_onednn_kernels_and_track_eager(tiny, tmp_path, tokenizer, sentences,
                                                                  every: bool) -> None:
    from torch._inductor.utils import run_and_get_code

    calib = [tokenize(tokenizer, sentences[:3]), tokenize(tokenizer, sentences[3:])]
    # every input static and no SmoothQuant divisor between GELU and the FFN-down's quantization: the FFN-up
    # kernel can write that uint8 input itself
    q = quantize_int8(tiny, calibration=calib, smooth=None if every else 0.5, weight_bits=8,
                      static_inputs=[".*"] if every else [LN_INPUTS])
    assert sum(m.act_qparams is not None for m in q.modules() if isinstance(m, Int8Linear)) == (12 if every else 8)
    deepshrink.save(q, tmp_path / "q.dsa")
    back = deepshrink.load(tmp_path / "q.dsa")
    example = tokenize(tokenizer, (sentences * 2)[:8], pad_to=24)
    compiled, code = run_and_get_code(lambda: compile_int8(back, example, lengths=[24]))
    code = "\n".join(code)
    calls = [line for line in code.splitlines() if "onednn.qlinear_pointwise" in line and "assert" not in line]
    assert len(calls) >= (12 if every else 8)  # every static layer is a oneDNN int8 kernel
    assert "layer_norm_quantize_per_tensor" in code  # the input quantization is fused into a LayerNorm kernel
    gelu = [line for line in calls if "'gelu'" in line]  # FFN-up with its GELU fused
    assert len(gelu) == 2
    if every:  # ... and writing the FFN-down's uint8 input itself
        assert all("torch.uint8" in line for line in gelu)
    ids, mask = example
    with torch.no_grad():
        eager = back(ids, mask)
    got = compiled(ids, mask)
    assert _cos(got, eager) > 0.999 and float((got - eager).abs().max()) < 1e-3


def test_bad_static_settings_are_clear_errors(tiny, tokenizer, sentences) -> None:
    calib = [tokenize(tokenizer, sentences)]
    enc = tiny
    before = copy.deepcopy(enc.state_dict())
    with pytest.raises(DataError, match="static inputs need calibration"):
        quantize_int8(enc, static_inputs=[LN_INPUTS])
    with pytest.raises(ConfigError, match="static_inputs pattern 'nope' matches no quantized"):
        quantize_int8(enc, calibration=calib, static_inputs=["nope"])
    with pytest.raises(ConfigError, match="static_inputs pattern .* matches no quantized"):  # skipped = not int8
        quantize_int8(enc, calibration=calib, skip=["intermediate"], static_inputs=["intermediate"])
    with pytest.raises(ConfigError, match="static_inputs must be a list"):
        quantize_int8(enc, calibration=calib, static_inputs=LN_INPUTS)
    with pytest.raises(ConfigError, match="static_inputs: bad regex"):
        quantize_int8(enc, calibration=calib, static_inputs=["("])
    for bad in (0, 50, 100.5, True, "99"):
        with pytest.raises(ConfigError, match="percentile must be a number in \\(50, 100\\]"):
            quantize_int8(enc, calibration=calib, static_inputs=[LN_INPUTS], percentile=bad)
    q = quantize_int8(enc, calibration=calib, weight_bits=8)
    with pytest.raises(ModelError, match="'bert.embeddings' is not an Int8Linear"):
        calibrate_static(q, calib, ["bert.embeddings"])
    with pytest.raises(ConfigError, match="names must be a list of layer names"):
        calibrate_static(q, calib, "bert.encoder.layer.0.attention.self.query")
    with pytest.raises(DataError, match="must be an \\(input_ids, attention_mask\\) pair"):
        calibrate_static(q, [(*calib[0], calib[0][1])], ["bert.encoder.layer.0.attention.self.query"])
    with pytest.raises(DataError, match="static inputs need calibration"):
        calibrate_static(q, [], ["bert.encoder.layer.0.attention.self.query"])
    with pytest.raises(ConfigError, match="static_inputs were fixed when it was quantized"):
        compile_int8(q, calib[0], static_inputs=[LN_INPUTS])
    with pytest.raises(ConfigError, match="static_inputs applies to the per-token scheme"):
        compile_int8(enc, calib[0], activations="static", calibration=calib, static_inputs=[LN_INPUTS])
    with pytest.raises(ModelError, match="malformed int8_linears entry"):
        install_int8_record(copy.deepcopy(enc), [["bert.encoder.layer.0.attention.self.query", 8, False, True, 1]])
    layer = Int8Linear(4, 3, static=True)
    for bad in ([0.0, 10.0], [float("nan"), 10.0], [0.1, 300.0], [0.1, 2.5]):  # a damaged or hand-edited file
        layer.act_qparams = torch.tensor(bad)
        with pytest.raises(ModelError, match="act_qparams must be"):
            layer(torch.ones(2, 4))
    after = enc.state_dict()  # the caller's float model is never modified, also by refused calls
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
