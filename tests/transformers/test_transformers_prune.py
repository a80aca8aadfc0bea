"""Head / FFN pruning and layer dropping on a tiny random BERT encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.transformers import (
    bert_layers, drop_layers, prune_ffn, prune_heads, prune_layer_heads, structure, tokenize,
)


def _batches(tokenizer, sentences):
    return [tokenize(tokenizer, sentences, max_length=32)]


def test_head_and_ffn_pruning_keep_shapes_run_and_update_the_record(tiny, tokenizer, sentences) -> None:
    batches = _batches(tokenizer, sentences)
    prune_heads(tiny, 0.5, batches)
    prune_ffn(tiny, 0.5, batches, round_to=8)
    s = structure(tiny)
    assert sum(s["heads"]) == 4 and all(h >= 1 for h in s["heads"])
    assert s["ffn"] == [32, 32] and tiny.config.intermediate_size == 32
    for layer, h in zip(bert_layers(tiny), s["heads"]):
        assert layer.attention.self.query.weight.shape == (h * 8, 32)
        assert layer.attention.output.dense.weight.shape == (32, h * 8)
    out = tiny(*batches[0])
    assert out.shape == (len(sentences), 32) and torch.isfinite(out).all()
    rec = tiny._deepshrink_arch["kwargs"]
    assert rec["heads"] == s["heads"] and rec["intermediate"] == [32, 32]


def test_pruning_zero_importance_heads_and_neurons_leaves_outputs_unchanged(tiny, tokenizer, sentences) -> None:
    batches = _batches(tokenizer, sentences)
    layers = bert_layers(tiny)
    with torch.no_grad():  # heads 1 and 3 of layer 0 and head 2 of layer 1 contribute nothing; 16 dead neurons
        layers[0].attention.output.dense.weight[:, 8:16] = 0
        layers[0].attention.output.dense.weight[:, 24:32] = 0
        layers[1].attention.output.dense.weight[:, 16:24] = 0
        for layer in layers:
            layer.output.dense.weight[:, :16] = 0
        before = tiny(*batches[0])
    kept = prune_heads(tiny, 3 / 8, batches)
    assert kept == [[0, 2], [0, 1, 3]]
    prune_ffn(tiny, 0.25, batches, round_to=1)
    assert structure(tiny)["ffn"] == [48, 48]
    with torch.no_grad():
        after = tiny(*batches[0])
    assert torch.allclose(after, before, atol=1e-5)


def test_layer_dropping_keeps_the_listed_layers(tiny, tokenizer, sentences) -> None:
    second = bert_layers(tiny)[1]
    assert drop_layers(tiny, [1]) == [1]
    assert bert_layers(tiny) == [second] and tiny.config.num_hidden_layers == 1
    assert tiny._deepshrink_arch["kwargs"]["num_hidden_layers"] == 1
    assert tiny(*_batches(tokenizer, sentences)[0]).shape == (len(sentences), 32)


def test_bad_input_is_reported_clearly(tiny, tokenizer, sentences) -> None:
    with pytest.raises(ModelError, match="not a BERT-family model"):
        prune_heads(nn.Sequential(nn.Linear(4, 4)), 0.5, [])
    with pytest.raises(ConfigError, match="ratio must be in"):
        prune_heads(tiny, 1.0, _batches(tokenizer, sentences))
    with pytest.raises(ConfigError, match="head indices"):
        prune_layer_heads(bert_layers(tiny)[0], [])
    with pytest.raises(ConfigError, match="calibration batches"):
        prune_ffn(tiny, 0.5)
    with pytest.raises(ConfigError, match="layers to keep"):
        drop_layers(tiny, [5])
    ids = torch.ones(1, 65, dtype=torch.int64)
    with pytest.raises(ConfigError, match="over the model's maximum 64"):
        tiny(ids, torch.ones_like(ids))


def test_distillation_recovers_a_dropped_layer(tiny, tokenizer, sentences) -> None:
    import copy

    from deepshrink.transformers import DistillConfig, distill

    student = copy.deepcopy(tiny)
    drop_layers(student, [1])
    ids, mask = tokenize(tokenizer, sentences, max_length=32)
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(student(ids, mask), tiny(ids, mask)).mean()
    losses = distill(student, tiny, tokenizer, sentences, layer_map=[1],
                     config=DistillConfig(steps=30, batch_size=6, lr=3e-3, max_length=32))
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(student(ids, mask), tiny(ids, mask)).mean()
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5]) / 2
    assert after > before and not student.training
    with pytest.raises(ConfigError, match="layer_map"):
        distill(student, tiny, tokenizer, sentences, layer_map=[7])


@pytest.mark.parametrize("what", ["heads", "ffn"])
def test_pruning_an_int8_encoder_is_a_clear_error_and_changes_nothing(tiny, what):
    from deepshrink.core.errors import ModelError
    from deepshrink.transformers import prune_ffn, prune_heads
    from deepshrink.transformers.int8 import quantize_int8

    q = quantize_int8(tiny, weight_bits=8)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(ModelError, match="int8 encoder.*prune the float model first"):
        (prune_heads if what == "heads" else prune_ffn)(q, 0.5)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("sentences", [[], "one sentence", ["ok", 3]])
def test_encode_refuses_what_is_not_a_list_of_sentences(tiny, tokenizer, sentences):
    from deepshrink.core.errors import DataError
    from deepshrink.transformers import encode

    with pytest.raises(DataError, match="encode:"):
        encode(tiny, tokenizer, sentences)
