"""compile_int8 (torch.export + X86InductorQuantizer + Inductor freezing) on a tiny random BERT encoder: the
generated code runs oneDNN int8 Linear kernels (skipped layers stay fp32), outputs track the float model
at any batch size / shorter sequences, bad input gives clear errors."""

from __future__ import annotations

import pytest
import torch

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.transformers import build_encoder, tokenize
from deepshrink.transformers.inductor import FFN_OUT, compile_int8, linear_names


TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(dict(TINY)).eval()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


@pytest.fixture(scope="module")
def compiled(tokenizer, sentences):
    from torch._inductor.utils import run_and_get_code

    model = tiny_encoder()
    example = tokenize(tokenizer, (sentences * 2)[:8], pad_to=24)
    int8, code = run_and_get_code(lambda: compile_int8(model, example, skip=[FFN_OUT]))
    return model, int8, "\n".join(code)


@pytest.mark.slow
def test_generated_code_runs_onednn_int8_linears_and_keeps_skipped_layers_fp32(compiled) -> None:
    _, int8, code = compiled
    # integer GEMMs for the 10 quantized Linears (2 layers x 6, minus FFN-out): oneDNN's qlinear, or aten's
    # int8 x int8 -> int32 _int_mm where Inductor leaves the Q/K/V projections of one shared input (seen on
    # AVX512-VNNI CPUs)
    calls = [line for line in code.splitlines()
             if ("onednn.qlinear_pointwise" in line or "._int_mm(" in line) and "assert" not in line]
    assert len(calls) == 10
    assert "_mkl_linear" in code or "addmm" in code  # the two fp32 FFN down-projections
    assert int8.skipped == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert len(int8.quantized) == 10 and int8.activations == "per-token"


@pytest.mark.slow
@pytest.mark.parametrize("n, length", [(8, 24), (3, 24), (11, None)])
def test_outputs_track_the_float_model_at_any_batch_and_shorter_sequences(compiled, tokenizer, sentences,
                                                                          n: int, length: int | None) -> None:
    model, int8, _ = compiled
    text = (sentences * 2)[:n]
    ids, mask = tokenize(tokenizer, text, pad_to=length) if length else tokenize(tokenizer, text)
    with torch.no_grad():
        ref = model(ids, mask)
    got = int8(ids, mask)
    assert got.shape == ref.shape
    assert _cos(got, ref) > 0.98 and not torch.equal(got, ref)  # quantized, yet close


@pytest.mark.slow
@pytest.mark.parametrize("activations", ["per-tensor", "static"])
def test_uint8_schemes_run_onednn_kernels_and_stay_close(tokenizer, sentences, activations: str) -> None:
    from torch._inductor.utils import run_and_get_code

    model = tiny_encoder(1)
    example = tokenize(tokenizer, sentences[:4], pad_to=16)
    if activations == "static":
        with pytest.raises(DataError, match="calibration"):
            compile_int8(model, example, activations="static")
    int8, code = run_and_get_code(lambda: compile_int8(model, example, activations=activations,
                                                       calibration=[example]))
    code = "\n".join(code)
    assert "onednn.qlinear_pointwise" in code
    assert ("choose_qparams" in code) == (activations == "per-tensor")  # range computed per call or calibrated
    with torch.no_grad():
        ref = model(*example)
    assert int8.activations == activations and _cos(int8(*example), ref) > 0.97


@pytest.mark.slow
def test_the_compiled_encoder_is_inference_only_and_refuses_longer_sequences(compiled, tokenizer, sentences) -> None:
    _, int8, _ = compiled
    assert int8.eval() is int8
    with pytest.raises(ModelError, match="inference only"):
        int8.train()
    ids, mask = tokenize(tokenizer, sentences[:2], pad_to=40)
    with pytest.raises(ConfigError, match="compiled length 24"):
        int8(ids, mask)
    with pytest.raises(DataError, match="same shape"):
        int8(ids, mask[:, :5])
    ids, mask = tokenize(tokenizer, sentences[:2])
    with pytest.raises(DataError, match="token id 30522 is outside the model's vocabulary"):
        int8(ids.masked_fill(ids == 102, 30522), mask)  # the compiled lookup would read out of bounds


def test_bad_options_are_clear_errors(tiny, tokenizer, sentences) -> None:
    example = tokenize(tokenizer, sentences[:2], pad_to=16)
    with pytest.raises(ConfigError, match="matches no Linear"):
        compile_int8(tiny, example, skip=["layer\\.9\\."])
    with pytest.raises(ConfigError, match="bad regex"):
        compile_int8(tiny, example, skip=["("])
    with pytest.raises(ConfigError, match="nothing to quantize"):
        compile_int8(tiny, example, skip=["."])
    with pytest.raises(ConfigError, match="not a single string"):
        compile_int8(tiny, example, skip=FFN_OUT)
    with pytest.raises(DataError, match="pair"):
        compile_int8(tiny, example[0])
    with pytest.raises(DataError, match="integer"):
        compile_int8(tiny, (example[0].float(), example[1]))
    with pytest.raises(DataError, match="shape"):
        compile_int8(tiny, example, activations="static",
                     calibration=[tokenize(tokenizer, sentences[:3], pad_to=16)])
    with pytest.raises(ConfigError, match="activations"):
        compile_int8(tiny, example, activations="per-channel")
    with pytest.raises(ConfigError, match="per-tensor and static"):
        compile_int8(tiny, example, reduce_range=True)
    with pytest.raises(ConfigError, match="weight_bits"):
        compile_int8(tiny, example, activations="per-tensor", weight_bits=4)
    with pytest.raises(ConfigError, match="threads"):
        compile_int8(tiny, example, threads=0)
    with pytest.raises(ModelError, match="nn.Module"):
        compile_int8(lambda i, m: i, example)
    for bad in (0, 17, True, "16"):
        with pytest.raises(ConfigError, match="lengths: .* between 1 and the example's 16"):
            compile_int8(tiny, example, lengths=[bad])
    for bad in ([], "16", 16):
        with pytest.raises(ConfigError, match="non-empty list"):
            compile_int8(tiny, example, lengths=bad)
    with pytest.raises(ConfigError, match="'per-tensor' scheme's exported graph"):
        compile_int8(tiny, example, activations="per-tensor", lengths=[8, 16])


@pytest.mark.slow
def test_a_length_first_needed_inside_inference_mode_is_compiled_frozen_once(tokenizer, sentences) -> None:
    from torch._dynamo.utils import counters

    model = tiny_encoder(3)
    int8 = compile_int8(model, tokenize(tokenizer, sentences[:4], pad_to=16), lengths=[12])
    assert int8.lengths == (12, 16) and int8.compiled_lengths == {16}
    short = tokenize(tokenizer, ["Tuples are immutable.", "Lists are mutable sequences."], pad_to=16)
    assert int(short[1].sum(1).max()) <= 12
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():  # as compare_latency calls it: compiles length 12 here
        first = int8(*short)
    assert int8.compiled_lengths == {12, 16}
    again = int8(*short)
    with torch.no_grad():
        int8(*short)
    # one new graph, the frozen one, serves every call (a second would be a recompile without the freezing)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert torch.equal(first, again)
    # another model of the same class and shapes gets its own frozen graphs, not this one's
    other_model = tiny_encoder(4)
    other = compile_int8(other_model, tokenize(tokenizer, sentences[:4], pad_to=16), lengths=[12])
    theirs = other(*short)
    with torch.no_grad():
        assert _cos(first, model(*short)) > 0.98 and _cos(theirs, other_model(*short)) > 0.98
    assert _cos(first, theirs) < 0.9


def test_padding_extent_and_trim_keep_every_real_token() -> None:
    from deepshrink.transformers.inductor import default_lengths, padded_extent, trim_padding

    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])  # right-, left-padded, empty
    ids = torch.arange(15).reshape(3, 5)
    assert padded_extent(mask).tolist() == [2, 3, 0]
    t_ids, t_mask = trim_padding(ids, mask)
    assert torch.equal(t_ids, ids[:, :3]) and torch.equal(t_mask, mask[:, :3])
    assert trim_padding(ids[2:], mask[2:])[0].shape == (1, 1)  # an all-padding batch keeps one column
    assert default_lengths(128) == (16, 32, 64, 128) and default_lengths(100) == (16, 32, 64, 100)
    assert default_lengths(8) == (8,)


@pytest.mark.slow
def test_short_batches_run_at_a_shorter_compiled_length_with_identical_output(compiled, tokenizer,
                                                                               sentences) -> None:
    model, int8, _ = compiled
    fixed = compile_int8(model, tokenize(tokenizer, (sentences * 2)[:8], pad_to=24), skip=[FFN_OUT], lengths=[24])
    assert fixed.lengths == (24,) and int8.lengths == (16, 24)
    long = "An exception raised inside a finally clause replaces the exception that was being handled before."
    text = [sentences[0], long, *sentences[1:], long, *sentences] * 2  # 28 rows, two lengths mixed
    ids, mask = tokenize(tokenizer, text, pad_to=24)
    assert int(mask.sum(1).max()) > 16 >= int(mask.sum(1).min())
    int8.warm()  # both lengths compiled before the spy, so it sees only the call's chunks
    shapes: list[tuple[int, ...]] = []
    inner = int8._compiled
    object.__setattr__(int8, "_compiled", lambda i, m: shapes.append(tuple(i.shape)) or inner(i, m))
    try:
        got = int8(ids, mask)
    finally:
        object.__setattr__(int8, "_compiled", inner)
    # rows sorted by length: the 4 long ones and 4 short ones fill one chunk at 24 tokens, 20 short ones run at 16
    assert sorted(shapes) == [(8, 16), (8, 16), (8, 16), (8, 24)]
    assert torch.equal(got, fixed(ids, mask))  # same rows, same order, bit for bit


def test_nan_weights_are_refused(tiny, tokenizer, sentences) -> None:
    with torch.no_grad():
        tiny.bert.encoder.layer[0].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="intermediate.dense.weight.*NaN"):
        compile_int8(tiny, tokenize(tokenizer, sentences[:2], pad_to=16))


def test_linear_names_split_quantized_and_skipped(tiny) -> None:
    quantized, skipped = linear_names(tiny, [FFN_OUT, r"layer\.0\.attention\.self\.query$"])
    assert skipped == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.output.dense",
                       "bert.encoder.layer.1.output.dense"]
    assert len(quantized) == 9 and not set(quantized) & set(skipped)


def test_smoothing_keeps_the_float_function_and_shares_the_qkv_scale(tiny, tokenizer, sentences) -> None:
    from deepshrink.transformers.inductor import SmoothedLinear, smooth_linears

    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        ref = tiny(ids, mask)
        # a planted outlier channel in the hidden state (as BERT's LayerNorm outputs have)
        tiny.bert.embeddings.LayerNorm.weight[3] = 20.0
        planted = tiny(ids, mask)
    quantized, _ = linear_names(tiny)
    new = smooth_linears(tiny, [(ids, mask)], quantized, alpha=0.5)
    assert len(new) == 12 and all(n.endswith(".linear") for n in new)
    att = tiny.bert.encoder.layer[0].attention.self
    assert isinstance(att.query, SmoothedLinear) and att.query.inv_scale is att.key.inv_scale is att.value.inv_scale
    assert float(att.query.inv_scale[3]) < float(att.query.inv_scale.median())  # the outlier channel scaled down
    with torch.no_grad():
        got = tiny(ids, mask)
    assert torch.allclose(got, planted, atol=1e-5) and not torch.allclose(planted, ref, atol=1e-3)
    with pytest.raises(ConfigError, match="alpha"):
        smooth_linears(tiny, [(ids, mask)], [], alpha=1.5)
    with pytest.raises(DataError, match="calibration"):
        smooth_linears(tiny, [], [], alpha=0.5)


@pytest.mark.slow
def test_smoothed_per_token_int8_stays_close(tokenizer, sentences) -> None:
    model = tiny_encoder(2)
    example = tokenize(tokenizer, sentences[:4], pad_to=16)
    int8 = compile_int8(model, example, smooth=0.5, calibration=[tokenize(tokenizer, sentences)])
    with torch.no_grad():
        ref = model(*example)
    assert int8.smooth == 0.5 and _cos(int8(*example), ref) > 0.98
    with pytest.raises(ConfigError, match="per-token"):
        compile_int8(model, example, activations="per-tensor", smooth=0.5)


@pytest.mark.slow
def test_calls_of_any_batch_and_grad_mode_reuse_the_frozen_graph(compiled, tokenizer, sentences) -> None:
    from torch._dynamo.utils import counters

    _, int8, _ = compiled
    assert int8.warm() is int8 and int8.compiled_lengths == {16, 24}  # every compiled length, now
    int8(*tokenize(tokenizer, sentences[:3], pad_to=24))  # first call after the others ran
    before = dict(counters["stats"])
    int8(*tokenize(tokenizer, sentences[:3], pad_to=24))
    int8(*tokenize(tokenizer, sentences * 2))
    with torch.no_grad():
        int8(*tokenize(tokenizer, sentences[:5]))
    with torch.inference_mode():
        int8(*tokenize(tokenizer, sentences[:3], pad_to=24))  # inference tensors, padded inside
    assert dict(counters["stats"]) == before  # no recompilation (it would drop the int8 freezing)


def test_a_length_whose_compile_was_refused_stays_refused(monkeypatch) -> None:
    """A refused compile leaves Dynamo's graph cached: a second try would capture no code and pass unchecked,
    so the encoder remembers the refusal instead of asking again."""
    import deepshrink.quantize.backends.inductor as backend
    from deepshrink.core.errors import ModelError
    from deepshrink.transformers.inductor import CompiledEncoder

    calls = []

    def refuse(compiled, example, threads) -> None:
        calls.append(example[0].shape)
        raise ModelError("Inductor lowered no int8 kernel (test)")

    monkeypatch.setattr(backend, "warm_frozen", refuse)
    enc = CompiledEncoder(lambda ids, mask: ids, 4, 32, 0, quantized=["q"], skipped=[], activations="per-token",
                          lengths=[16, 32])
    for _ in range(2):
        with pytest.raises(ModelError, match="lowered no int8 kernel"):
            enc.warm()
    assert calls == [(4, 16)] and enc.compiled_lengths == {32}
