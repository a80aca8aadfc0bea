"""int8 Linear / embedding compression, ONNX export and artifact round trips of a tiny BERT encoder."""

from __future__ import annotations

import pytest
import torch

import deepshrink
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.export import check_onnx, export_model
from deepshrink.export.onnx import default_dynamic_axes
from deepshrink.transformers import (
    CodebookEmbedding, Int8Embedding, check_known, compress_embedding, load_encoder, load_tokenizer, ort_quantize,
    prune_ffn, prune_heads, prune_vocabulary, quantize_linears, tokenize,
)

pytest.importorskip("onnxruntime")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def test_int8_linears_use_integer_kernels_and_stay_close(tiny, tokenizer, sentences) -> None:
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        ref = tiny(ids, mask)
        q = quantize_linears(tiny, per_channel=True, skip=[r"layer\.1\.output\.dense"])
        out = q(ids, mask)
    kinds = {n: type(m).__module__ for n, m in q.named_modules() if n.endswith(("query", "output.dense"))}
    assert kinds["bert.encoder.layer.0.attention.self.query"].startswith("torch.ao.nn.quantized.dynamic")
    assert kinds["bert.encoder.layer.1.output.dense"] == "torch.nn.modules.linear"
    assert _cos(out, ref) > 0.99 and not torch.equal(out, ref)


def test_embedding_tables_compress_and_stay_close(tiny, tokenizer, sentences) -> None:
    ids, mask = tokenize(tokenizer, sentences)
    w = tiny.bert.embeddings.word_embeddings.weight.detach().clone()
    with torch.no_grad():
        ref = tiny(ids, mask)
    compress_embedding(tiny, "int8")
    emb = tiny.bert.embeddings.word_embeddings
    assert isinstance(emb, Int8Embedding) and emb.codes.dtype == torch.int8
    assert (emb.weight - w).abs().max() <= w.abs().amax(dim=1).max() / 127 / 2 + 1e-7  # half a step per row
    with torch.no_grad():
        assert _cos(tiny(ids, mask), ref) > 0.999
    cb = CodebookEmbedding.from_float(torch.nn.Embedding.from_pretrained(w), bits=4)
    assert cb.codebook.numel() == 16 and int(cb.codes.max()) <= 15
    assert float((cb.weight - w).abs().mean()) < float(w.abs().mean()) / 4
    with pytest.raises(ConfigError, match="'int8' or 'codebook'"):
        compress_embedding(tiny, "int4")


def test_vocabulary_pruning_keeps_corpus_outputs_and_maps_unseen_tokens_to_unk(tiny, tokenizer, sentences) -> None:
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        ref = tiny(ids, mask)
    keep = prune_vocabulary(tiny, tokenizer, sentences)
    assert tiny.bert.embeddings.word_embeddings.num_embeddings == keep.numel() < 100
    with torch.no_grad():
        assert torch.allclose(tiny(ids, mask), ref, atol=1e-6)
    new_ids, _ = tokenize(tokenizer, ["Zebras graze quietly."])
    assert int(tiny.token_map[new_ids[0, 1]]) == int(tiny.token_map[tokenizer.unk_token_id])
    with pytest.raises(DataError, match="outside the pruned vocabulary"):
        check_known(tiny, new_ids, tokenizer.unk_token_id)
    check_known(tiny, ids, tokenizer.unk_token_id)
    with pytest.raises(ModelError, match="already pruned"):
        prune_vocabulary(tiny, tokenizer, sentences)


def test_compressed_encoder_round_trips_exactly_through_the_artifact(tiny, tokenizer, sentences, tmp_path) -> None:
    batches = [tokenize(tokenizer, sentences)]
    prune_heads(tiny, 0.25, batches)
    prune_ffn(tiny, 0.5, batches, round_to=8)
    prune_vocabulary(tiny, tokenizer, sentences)
    compress_embedding(tiny, "int8")
    path = export_model(tiny, tmp_path / "enc.dsk", "deepshrink")
    back = deepshrink.load(path)
    with torch.no_grad():
        assert torch.equal(back(*batches[0]), tiny(*batches[0]))
    assert type(back.bert.embeddings.word_embeddings) is Int8Embedding


def test_onnx_runtime_matches_pytorch_and_int8_onnx_stays_close(tiny, tokenizer, sentences, tmp_path) -> None:
    batches = [tokenize(tokenizer, sentences)]
    prune_heads(tiny, 0.25, batches)
    compress_embedding(tiny, "codebook", bits=4)
    example = tokenize(tokenizer, sentences[:2])
    path = export_model(tiny, tmp_path / "enc.onnx", "onnx", example,
                        dynamic_axes=default_dynamic_axes(example, 1, sequence=True))
    assert check_onnx(tiny, path, batches[0], rtol=1e-4, atol=1e-5) < 1e-5  # other batch and sequence length
    q = ort_quantize(path, tmp_path / "enc.int8.onnx", per_channel=True)
    from deepshrink.export import ort_session, run_onnx

    got = torch.from_numpy(run_onnx(ort_session(q), batches[0])[0])
    with torch.no_grad():
        assert _cos(got, tiny(*batches[0])) > 0.98
    with pytest.raises(ModelError, match="differs from PyTorch"):
        check_onnx(tiny, q, batches[0], rtol=1e-6, atol=1e-7)


def test_missing_model_or_tokenizer_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(DataError, match="lacks config.json"):
        load_encoder(tmp_path)
