"""Int8Linear / quantize_int8 on tiny random BERT encoders: the eager maths against an independent reference
(per-token symmetric int8 activations, per-row codes), codes within the bit range, a bit-exact artifact
round trip with the codes bit-packed, the compiled encoder built from the reloaded artifact equal to the
one built from memory and close to the eager model, and clear errors on bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.transformers import build_encoder, compress_embedding, tokenize
from deepshrink.transformers.inductor import FFN_OUT, compile_int8
from deepshrink.transformers.int8 import Int8Linear, install_int8_record, int8_linear_names, quantize_int8

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(dict(TINY)).eval()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=-1).min())


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, inv: torch.Tensor, bits: int) -> torch.Tensor:
    """Written from the definitions: codes round(w / (max|w_row| / (2^(b-1) - 1/2))) clipped to the signed
    range; each token's activation times 1 / (max|x_t| / 127.5) (torchao's formula), rounded, clipped to
    int8; the integer products summed in float64. The steps are float32 like the model's: each row's
    largest value lands on a rounding tie (+-63.5 or +-127.5) that float64 would break differently."""
    x = x * inv
    top = 2 ** (bits - 1)
    w_step = w.abs().max(dim=1).values / (top - 0.5)
    codes = (w / w_step[:, None]).round().clamp(-top, top - 1)
    x_step = x.abs().max(dim=-1, keepdim=True).values / 127.5
    xq = (x * (1.0 / x_step)).round().clamp(-128, 127)
    return (xq.double() @ codes.double().T) * x_step.double() * w_step.double() + b.double()


@pytest.mark.parametrize("bits, width", [(7, 48), (8, 48), (8, 1100)])  # 1100: sums past 2^24 (float64)
def test_int8_linear_matches_an_independent_reference(bits: int, width: int) -> None:
    torch.manual_seed(bits + width)
    lin = nn.Linear(width, 20)
    inv = torch.rand(width) + 0.5
    x = torch.randn(3, 5, width)
    x[..., 7] *= 30  # an outlier channel
    q = Int8Linear.from_float(lin, bits, inv)
    assert not list(q.parameters()) and {n for n, _ in q.named_buffers()} == {"codes", "scale", "bias", "inv_scale"}
    assert q.codes.dtype == torch.int8 and q.scale.shape == (20,) and q.inv_scale is inv
    with torch.no_grad():
        got = q(x)
        ref = _reference(x, lin.weight, lin.bias, inv, bits)
        plain = nn.functional.linear(x * inv, lin.weight, lin.bias)
    assert got.dtype == torch.float32 and got.shape == (3, 5, 20)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert _cos(got.reshape(-1, 20), plain.reshape(-1, 20)) > 0.99 and not torch.allclose(got, plain, atol=1e-4)


@pytest.mark.parametrize("bits", [7, 8])
def test_codes_stay_within_the_bit_range_and_use_it(tiny, tokenizer, sentences, bits: int) -> None:
    q = quantize_int8(tiny, weight_bits=bits, skip=[FFN_OUT])
    names = int8_linear_names(q)
    assert len(names) == 10 and not any(n.endswith("output.dense") and "attention" not in n for n in names)
    top = 2 ** (bits - 1)
    for name in names:
        codes = dict(q.named_modules())[name].codes
        assert int(codes.min()) >= -top and int(codes.max()) <= top - 1
        assert bool((codes.int().abs().amax(1) >= top - 1).all())  # every row's largest weight reaches the top
    assert isinstance(tiny.bert.encoder.layer[0].attention.self.query, nn.Linear)  # the float model is untouched
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        assert _cos(q(ids, mask), tiny(ids, mask)) > 0.98


def _smoothed(tokenizer, sentences, seed: int = 0, bits: int = 7) -> nn.Module:
    model = tiny_encoder(seed)
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight[3] = 20.0  # an outlier channel, as in BERT
    q = quantize_int8(model, calibration=[tokenize(tokenizer, sentences)], smooth=0.5, weight_bits=bits)
    return compress_embedding(q, "int8")


@pytest.mark.parametrize("bits", [7, 8])
def test_save_load_round_trip_is_bit_exact(tmp_path, tokenizer, sentences, bits: int) -> None:
    q = _smoothed(tokenizer, sentences, bits=bits)
    att = q.bert.encoder.layer[0].attention.self
    assert att.query.inv_scale is att.key.inv_scale  # query/key/value share one smoothing divisor
    deepshrink.save(q, tmp_path / "q.dsa")
    back = deepshrink.load(tmp_path / "q.dsa")
    assert int8_linear_names(back) == int8_linear_names(q)
    loaded = dict(back.named_modules())
    for name in int8_linear_names(q):
        b = loaded[name]
        assert isinstance(b, Int8Linear) and b.bits == bits and b.inv_scale is not None and b.bias is not None
    sa, sb = q.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        assert torch.equal(q(ids, mask), back(ids, mask))


def test_the_artifact_stores_the_codes_packed(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_encoder({"vocab_size": 64, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 256, "max_position_embeddings": 32}).eval()
    q = quantize_int8(model, weight_bits=7)
    rep = deepshrink.save(q, tmp_path / "q.dsa")
    size = (tmp_path / "q.dsa").stat().st_size
    codes = [t for n, t in q.state_dict().items() if n.endswith(".codes")]
    code_bytes = sum(t.numel() * 7 / 8 for t in codes)  # 12 tensors, 98,304 codes
    other_bytes = sum(4 * t.numel() for n, t in q.state_dict().items() if not n.endswith(".codes"))
    assert sum(r.nbytes for r in rep.tensors if r.name.endswith(".codes")) <= 1.1 * code_bytes
    assert size - rep.meta_bytes <= 1.1 * (code_bytes + other_bytes)
    assert size - rep.meta_bytes < code_bytes * 8 / 7 + other_bytes  # less than one byte a code
    with torch.no_grad():
        ids = torch.randint(0, 64, (2, 9))
        assert torch.equal(q(ids, torch.ones_like(ids)), deepshrink.load(tmp_path / "q.dsa")(ids, torch.ones_like(ids)))


@pytest.mark.slow
def test_compiled_from_the_artifact_equals_compiled_from_memory_and_tracks_eager(tmp_path, tokenizer,
                                                                              sentences) -> None:
    # (no run_and_get_code here: a graph compiled inside it recompiles, unfrozen, on its first call outside;
    # test_transformers_inductor checks the oneDNN kernels of this same path)
    q = _smoothed(tokenizer, sentences, seed=3)
    deepshrink.save(q, tmp_path / "q.dsa")
    back = deepshrink.load(tmp_path / "q.dsa")
    example = tokenize(tokenizer, sentences[:4], pad_to=16)
    from_memory = compile_int8(q, example)
    from_file = compile_int8(back, example)
    assert from_file.quantized == int8_linear_names(q) and from_file.skipped == [] and from_file.smooth is None
    ids, mask = tokenize(tokenizer, sentences)
    got = from_file(ids, mask)
    assert torch.equal(got, from_memory(ids, mask))
    with torch.no_grad():
        eager = q(ids, mask)
    # the stored codes run as they are: the same model quantized with 8-bit codes is 3.5e-4 away from these
    assert _cos(got, eager) > 0.999 and float((got - eager).abs().max()) < 1e-4


def test_bad_input_is_a_clear_error(tiny, tokenizer, sentences) -> None:
    lin = nn.Linear(8, 4)
    with pytest.raises(ConfigError, match="weight_bits must be 7 or 8"):
        Int8Linear.from_float(lin, 6)
    with pytest.raises(ConfigError, match="weight_bits"):
        quantize_int8(tiny, weight_bits=6)
    with pytest.raises(ModelError, match="inv_scale"):
        Int8Linear.from_float(lin, 7, torch.ones(5))
    with pytest.raises(ModelError, match="nn.Linear"):
        Int8Linear.from_float(nn.Conv1d(2, 2, 1), 7)
    with pytest.raises(ConfigError, match="matches no Linear"):
        quantize_int8(tiny, skip=[r"layer\.9\."])
    with pytest.raises(ConfigError, match="nothing to quantize"):
        quantize_int8(tiny, skip=["."])
    with pytest.raises(DataError, match="calibration"):
        quantize_int8(tiny, smooth=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        quantize_int8(tiny, smooth=1.5, calibration=[tokenize(tokenizer, sentences)])
    with pytest.raises(DataError, match="pair"):
        quantize_int8(tiny, calibration=[torch.zeros(2, 3)])
    with pytest.raises(ModelError, match="nn.Module"):
        quantize_int8(lambda i, m: i)
    q = quantize_int8(tiny, weight_bits=7, skip=[FFN_OUT])
    with pytest.raises(ModelError, match="already holds Int8Linear"):
        quantize_int8(q)
    example = tokenize(tokenizer, sentences[:2], pad_to=16)
    with pytest.raises(ConfigError, match="smooth=None"):
        compile_int8(q, example, smooth=0.5, calibration=[example])
    with pytest.raises(ConfigError, match="weight_bits=8 contradicts"):
        compile_int8(q, example, weight_bits=8)
    with pytest.raises(ConfigError, match="already an Int8Linear"):
        compile_int8(q, example, skip=[r"attention\.self\.query$"])
    with pytest.raises(ConfigError, match="matches no Linear"):
        compile_int8(q, example, skip=[r"layer\.9\."])
    with pytest.raises(ConfigError, match="per-token"):
        compile_int8(q, example, activations="per-tensor")
    with torch.no_grad():
        q.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")  # a float Linear kept by skip
    with pytest.raises(ModelError, match="NaN"):
        compile_int8(q, example)


def test_malformed_int8_records_are_refused(tiny) -> None:
    with pytest.raises(ModelError, match="not a Linear"):
        install_int8_record(tiny, [["bert.encoder.layer.0.nope", 7, False, True]])
    with pytest.raises(ModelError, match="malformed"):
        install_int8_record(tiny, [["bert.encoder.layer.0.attention.self.query", 7, "yes", True]])
    with pytest.raises(ConfigError, match="weight_bits"):
        install_int8_record(tiny, [["bert.encoder.layer.0.attention.self.query", 6, False, True]])
    with pytest.raises(ModelError, match="list"):
        install_int8_record(tiny, {"a": 1})
    from deepshrink.artifact.quantized import encode_int_codes

    with pytest.raises(ConfigError, match="do not fit 7 signed bits"):
        encode_int_codes(torch.tensor([[-65, 3]], dtype=torch.int8), 7, "k")


def test_int8_model_counts_the_same_parameters(tiny: torch.nn.Module) -> None:
    from deepshrink.measure import count_nonzeros, count_params
    from deepshrink.transformers import compress_embedding, quantize_int8

    before = count_params(tiny)
    q = quantize_int8(compress_embedding(copy.deepcopy(tiny), "int8"), weight_bits=7)
    # every Linear weight and bias and the embedding table are still there, as integer codes
    assert count_params(q) == before
    assert 0 < count_nonzeros(q) <= before


def test_run_reports_list_int8_layers_with_their_code_width(tiny, tmp_path):
    import deepshrink
    from deepshrink.report.run import record_stage
    from deepshrink.transformers import compress_embedding

    q = compress_embedding(quantize_int8(tiny, weight_bits=7), "int8")
    deepshrink.save(q, tmp_path / "q.dsk")
    ids = torch.randint(0, 1000, (2, 8))
    rec = record_stage("quantize", "quantize", q, example_inputs=(ids, torch.ones_like(ids)),
                       artifact_path=tmp_path / "q.dsk", latency=False)
    bits = {row["name"]: row["bits"] for row in rec["layers"]}
    assert all(bits[name] == 7 for name in int8_linear_names(q))  # these rows were missing
    assert bits["bert.embeddings.word_embeddings"] == 8  # was reported as 32
