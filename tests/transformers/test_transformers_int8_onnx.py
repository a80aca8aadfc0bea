"""An int8 encoder (``Int8Linear``) exports to ONNX as integer ops, and token ids are checked against the vocabulary."""

from __future__ import annotations

import pytest
import torch

import deepshrink
from deepshrink.core.errors import DataError
from deepshrink.export import check_onnx, export_model
from deepshrink.export.onnx import default_dynamic_axes
from deepshrink.transformers import compress_embedding, prune_heads, quantize_int8, tokenize
from deepshrink.transformers.int8 import Int8Linear, per_token_matmul

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _export(model: torch.nn.Module, path, example, opset: int | None = None):
    return export_model(model, path, "onnx", example, opset=opset,
                        dynamic_axes=default_dynamic_axes(example, 1, sequence=True))


@pytest.mark.parametrize("opset", [17, 18])
def test_int8_linears_export_as_matmulinteger_with_int8_weights(tiny, tokenizer, sentences, tmp_path, opset) -> None:
    calib = [tokenize(tokenizer, sentences)]
    q = quantize_int8(tiny, calibration=calib, smooth=0.5, weight_bits=8)
    compress_embedding(q, "int8")
    layers = {n: m for n, m in q.named_modules() if isinstance(m, Int8Linear)}
    path = _export(q, tmp_path / "q.onnx", tokenize(tokenizer, sentences[:2]), opset)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulInteger") == len(layers) > 0
    int8_shapes = sorted(tuple(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8)
    weight_shapes = sorted((m.in_features, m.out_features) for m in layers.values())
    assert all(s in int8_shapes for s in weight_shapes)  # the codes, transposed, one byte each
    float_onnx = sum(int(torch.tensor(i.dims).prod()) for i in graph.initializer
                     if i.data_type == onnx.TensorProto.FLOAT)
    float_model = sum(t.numel() for t in q.state_dict().values() if t.is_floating_point())
    assert float_onnx <= float_model  # no float copy of any weight (they would add 16,384 values)
    # another batch and sequence length than the export example; ONNX Runtime's integer products are exact
    assert check_onnx(q, path, calib[0], rtol=0.0, atol=1e-4) <= 1e-4


def test_int8_onnx_file_holds_one_byte_a_weight(tmp_path) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512)
    x = (torch.randn(2, 256),)
    f = export_model(linear, tmp_path / "f.onnx", "onnx", x)
    q = export_model(Int8Linear.from_float(linear, 8), tmp_path / "q.onnx", "onnx", x)
    weights = linear.weight.numel()
    assert f.stat().st_size >= 4 * weights
    assert weights <= q.stat().st_size <= weights + 12 * 512 + 4096  # codes + bias, scale + the graph


def test_exported_matmul_equals_the_eager_one_on_a_3d_input(tmp_path) -> None:
    torch.manual_seed(0)
    layer = Int8Linear.from_float(torch.nn.Linear(48, 24), 8).eval()
    x = torch.randn(3, 5, 48) * 4
    path = export_model(layer, tmp_path / "l.onnx", "onnx", (x,),
                        dynamic_axes={"input0": {0: "b", 1: "t"}, "output0": {0: "b", 1: "t"}})
    assert check_onnx(layer, path, (torch.randn(2, 7, 48),), rtol=0.0, atol=1e-5) <= 1e-5
    # the eager maths is the same function (per-token int8 x codes, exact)
    ref = (torch.round(x / (x.abs().amax(-1, keepdim=True) / 127.5)).clamp(-128, 127) @ layer.codes.float().t())
    got = per_token_matmul(x, layer.codes, torch.ones(24))
    assert torch.allclose(got, ref * (x.abs().amax(-1, keepdim=True) / 127.5), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 30522, 10**6])
def test_token_ids_outside_the_vocabulary_are_a_data_error(tiny, bad) -> None:
    ids = torch.tensor([[101, 2000, bad, 102]])
    mask = torch.ones_like(ids)
    with pytest.raises(DataError, match=f"token id {bad} is outside the model's vocabulary of 30522"):
        tiny(ids, mask)
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        prune_heads(tiny, 0.25, [(ids, mask)])  # calibration text goes through the same check
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        quantize_int8(tiny, calibration=[(ids, mask)], smooth=0.5)


def test_float_token_ids_are_a_data_error(tiny) -> None:
    with pytest.raises(DataError, match="integer token ids"):
        tiny(torch.ones(1, 4), torch.ones(1, 4))


def test_a_pruned_vocabulary_checks_ids_against_the_original_one(tiny, tokenizer, sentences, tmp_path) -> None:
    from deepshrink.transformers import prune_vocabulary

    ids, mask = tokenize(tokenizer, sentences)
    prune_vocabulary(tiny, tokenizer, sentences)
    with torch.no_grad():
        tiny(ids, mask)  # original ids, mapped by token_map
    deepshrink.save(tiny, tmp_path / "v.dsk")
    with pytest.raises(DataError, match="vocabulary of 30522"):
        deepshrink.load(tmp_path / "v.dsk")(torch.tensor([[30522]]), torch.ones(1, 1, dtype=torch.long))


def test_ort_fusion_of_an_eager_attention_export_matches_pytorch(tokenizer, sentences, tmp_path) -> None:
    from deepshrink.transformers import build_encoder, ort_fuse, ort_quantize

    torch.manual_seed(0)
    model = build_encoder({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 64, "max_position_embeddings": 64},
                          attn_implementation="eager").eval()
    example = tokenize(tokenizer, sentences[:2])
    path = _export(model, tmp_path / "e.onnx", example)
    fused, stats = ort_fuse(path, tmp_path / "f.onnx", num_heads=4, hidden_size=32)
    assert stats.get("Attention") == 2 and stats.get("SkipLayerNormalization") == 4
    assert check_onnx(model, fused, tokenize(tokenizer, sentences), rtol=1e-3, atol=1e-5) <= 1e-5
    q = ort_quantize(fused, tmp_path / "q.onnx")  # fused graphs quantize too (QAttention)
    assert "QAttention" in {n.op_type for n in onnx.load(str(q)).graph.node}


def test_a_mask_of_another_shape_is_a_data_error(tiny, tokenizer, sentences) -> None:
    ids, mask = tokenize(tokenizer, sentences[:3])
    for bad in (mask[:1], mask[:, :-1], mask[0]):
        with pytest.raises(DataError, match="attention_mask must have the shape of input_ids"):
            tiny(ids, bad)  # a [1, T] mask was broadcast to every sentence before


def test_int8_export_below_opset_13_is_refused(tiny, tokenizer, sentences, tmp_path) -> None:
    from deepshrink.core.errors import ModelError

    q = quantize_int8(tiny, weight_bits=8)
    with pytest.raises(ModelError, match="opset 13 or higher"):
        _export(q, tmp_path / "q.onnx", tokenize(tokenizer, sentences[:2]), 12)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("bits", [2, 4])
def test_codebook_embedding_indices_are_bit_packed(tiny, tokenizer, sentences, tmp_path, bits) -> None:
    q = compress_embedding(tiny, "codebook", bits=bits)
    report = deepshrink.save(q, tmp_path / "c.dsk")
    codes = next(r for r in report.tensors if r.name.endswith("word_embeddings.codes"))
    assert codes.nbytes <= codes.numel * bits / 8 * 1.02
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "c.dsk")(ids, mask), q(ids, mask))


def test_a_checkpoint_that_does_not_fit_is_refused(tiny, tmp_path) -> None:
    import json

    from safetensors.torch import load_file, save_file

    from deepshrink.transformers import load_encoder

    src = tmp_path / "tiny"
    tiny.bert.save_pretrained(str(src), safe_serialization=True)
    assert load_encoder(src) is not None  # the checkpoint as saved loads
    for name, change in (("partial", lambda t: {k: v for k, v in t.items() if ".layer.1." not in k}),
                         ("renamed", lambda t: {f"0_Transformer.{k}": v for k, v in t.items()})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((src / "config.json").read_text())
        save_file(change(load_file(str(src / "model.safetensors"))), str(folder / "model.safetensors"))
        with pytest.raises(DataError, match="the checkpoint lacks .* weights"):
            load_encoder(folder)
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="holds a 'gpt2' model"):
        load_encoder(gpt)


def test_encode_cuts_at_sentence_transformers_length_or_the_models(tiny, tokenizer) -> None:
    from deepshrink.transformers import encode

    long_text = " ".join(["word"] * 300)
    seen = []

    def spy(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.append(ids.shape[1])
        return torch.ones(ids.shape[0], 4)

    encode(spy, tokenizer, [long_text])
    spy.max_length = 64  # a model that takes less (its position table, or a compiled length)
    encode(spy, tokenizer, [long_text])
    assert seen == [256, 64]


def test_evaluator_inputs_and_duplicate_corpus_sentences() -> None:
    from deepshrink.measure.embedding import EmbeddingEvaluator

    def embed(texts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        table = {t: torch.randn(8, generator=g) for t in sorted(set(texts) | {"a", "b", "c", "d"})}
        return torch.stack([table[t] for t in texts])

    ev = EmbeddingEvaluator(embed, ["a", "b"], ["c", "d", "c"])
    assert ev.corpus == ["c", "d"]
    noisy = ev(lambda texts: embed(texts) + 1e-6)
    assert noisy.retrieval_agreement == 1.0
    for queries, corpus in (("ab", ["c"]), ([], None), (["a"], [1, 2])):
        with pytest.raises(DataError):
            EmbeddingEvaluator(embed, queries, corpus)


def test_distillation_preconditions_are_clear_errors(tiny, tokenizer, sentences) -> None:
    from deepshrink.core.errors import ConfigError, ModelError
    from deepshrink.transformers import DistillConfig, distill

    with pytest.raises(ConfigError, match="attn_implementation='eager'"):
        distill(copy_of(tiny), tiny, tokenizer, sentences, config=DistillConfig(steps=1, attention_weight=1.0))
    with pytest.raises(ModelError, match="no trainable parameters"):
        distill(quantize_int8(tiny, weight_bits=8), tiny, tokenizer, sentences, config=DistillConfig(steps=1))


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def test_an_architecture_record_cannot_name_hub_kernels_or_unknown_activations(tiny, tmp_path) -> None:
    from deepshrink.core.errors import CorruptArtifactError, ModelError
    from deepshrink.transformers import build_encoder

    small = {"vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16, "max_position_embeddings": 16}
    with pytest.raises(ModelError, match="attn_implementation must be one of sdpa, eager"):
        build_encoder(small, attn_implementation="kernels-community/flash-attn")
    with pytest.raises(ModelError, match="hidden_act must be one of"):
        build_encoder({**small, "hidden_act": "nope"})
    # the same through a (re-sealed) artifact: a corrupt file, not a download
    import json

    from deepshrink.codec import container

    deepshrink.save(build_encoder(small), tmp_path / "b.dsk")
    box = container.read_container(tmp_path / "b.dsk")
    meta = json.loads(json.dumps(box.meta))
    meta["arch"]["kwargs"]["attn_implementation"] = "kernels-community/flash-attn"
    container.write_container(tmp_path / "h.dsk", meta, box.blobs)
    with pytest.raises(CorruptArtifactError, match="attn_implementation must be one of"):
        deepshrink.load(tmp_path / "h.dsk")
