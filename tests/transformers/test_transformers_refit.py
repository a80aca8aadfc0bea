"""Least-squares refit of pruned FFN down-projections (deepshrink.transformers.refit)."""

from __future__ import annotations

import copy

import pytest
import torch

from deepshrink.core.errors import ConfigError
from deepshrink.transformers import bert_layers, ffn_importance, head_contribution, prune_ffn, prune_heads, tokenize
from deepshrink.transformers.refit import refit_ffn_outputs


def _batches(tokenizer, sentences):
    return [tokenize(tokenizer, sentences[:3]), tokenize(tokenizer, sentences[3:] * 4)]


def _ffn_inputs(model, batches, layer_index):
    """Real-token inputs of one layer's FFN (the intermediate's input), collected by a hook."""
    got = []
    layer = bert_layers(model)[layer_index]
    handle = layer.intermediate.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    with torch.no_grad():
        for ids, mask in batches:
            model(ids, mask)
    handle.remove()
    masks = torch.cat([m.reshape(-1) for _, m in batches]).bool()
    return torch.cat([g.reshape(-1, g.shape[-1]) for g in got])[masks]


def test_refit_solves_the_first_layers_least_squares_problem(tiny, tokenizer, sentences):
    batches = _batches(tokenizer, sentences)
    ref = copy.deepcopy(tiny)
    scores = ffn_importance(tiny, batches)
    prune_ffn(tiny, 0.5, scores=scores, round_to=1)
    originals = [(copy.deepcopy(l.intermediate), copy.deepcopy(l.output.dense)) for l in bert_layers(ref)]
    refit_ffn_outputs(tiny, batches, originals, ridge=0.0)
    # independent solution for layer 0, whose FFN inputs do not depend on any refit
    a = _ffn_inputs(tiny, batches, 0)
    layer0, ref0 = bert_layers(tiny)[0], bert_layers(ref)[0]
    with torch.no_grad():
        x = layer0.intermediate(a).double()
        y = ref0.output.dense(ref0.intermediate(a)).double()
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    want = torch.linalg.lstsq(xa, y).solution
    torch.testing.assert_close(layer0.output.dense.weight.double(), want[:-1].T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer0.output.dense.bias.double(), want[-1], atol=1e-4, rtol=1e-4)


def test_refit_brings_every_ffn_output_and_the_embedding_closer_to_the_original(tiny, tokenizer, sentences):
    batches = _batches(tokenizer, sentences)
    plain, fitted = copy.deepcopy(tiny), copy.deepcopy(tiny)
    scores = ffn_importance(tiny, batches)
    prune_ffn(plain, 0.5, scores=scores, round_to=1)
    prune_ffn(fitted, 0.5, batches, scores=scores, round_to=1, refit=True)
    assert [l.intermediate.dense.out_features for l in bert_layers(fitted)] == [32, 32]
    for i in range(2):
        a = _ffn_inputs(fitted, batches, i)
        with torch.no_grad():
            want = bert_layers(tiny)[i].output.dense(bert_layers(tiny)[i].intermediate(a))
            err_fit = (bert_layers(fitted)[i].output.dense(bert_layers(fitted)[i].intermediate(a)) - want).pow(2).mean()
            err_plain = (bert_layers(plain)[i].output.dense(bert_layers(plain)[i].intermediate(a)) - want).pow(2).mean()
        assert err_fit < 0.5 * err_plain
    ids, mask = batches[1]
    with torch.no_grad():
        e0, e1, e2 = (m(ids, mask) for m in (tiny, plain, fitted))
    cos = torch.nn.functional.cosine_similarity
    assert cos(e0, e2).mean() > cos(e0, e1).mean()


def test_refit_bad_input_is_reported_clearly(tiny, tokenizer, sentences):
    batches = _batches(tokenizer, sentences)
    originals = [(copy.deepcopy(l.intermediate), copy.deepcopy(l.output.dense)) for l in bert_layers(tiny)]
    scores = ffn_importance(tiny, batches)
    with pytest.raises(ConfigError, match="needs calibration batches"):
        prune_ffn(copy.deepcopy(tiny), 0.5, scores=scores, refit=True)
    with pytest.raises(ConfigError, match="refit must be True or False"):
        prune_ffn(copy.deepcopy(tiny), 0.5, batches, refit="yes")
    with pytest.raises(ConfigError, match="ridge"):
        refit_ffn_outputs(tiny, batches, originals, ridge=-1.0)
    with pytest.raises(ConfigError, match="more real calibration tokens than kept features"):
        refit_ffn_outputs(tiny, [tokenize(tokenizer, sentences[:1])], originals)


def test_head_refit_brings_each_attention_output_closer_and_keeps_shapes(tiny, tokenizer, sentences):
    batches = _batches(tokenizer, sentences)
    plain, fitted = copy.deepcopy(tiny), copy.deepcopy(tiny)
    scores = head_contribution(tiny, batches)
    kept = prune_heads(plain, 0.5, scores=scores, scope="layer")
    assert prune_heads(fitted, 0.5, batches, scores=scores, scope="layer", refit=True) == kept
    errors = {}
    for label, model in (("plain", plain), ("fitted", fitted)):
        got, want = [], []
        layer, ref = bert_layers(model)[0], bert_layers(tiny)[0]

        def hook(_m, args, kwargs, out, layer=layer, ref=ref):
            got.append(layer.attention.output.dense(out[0]))
            want.append(ref.attention.output.dense(ref.attention.self(*args, **kwargs)[0]))

        handle = layer.attention.self.register_forward_hook(hook, with_kwargs=True)
        with torch.no_grad():
            for ids, mask in batches:
                model(ids, mask)
        handle.remove()
        masks = torch.cat([m.reshape(-1) for _, m in batches]).bool()
        g = torch.cat([x.reshape(-1, x.shape[-1]) for x in got])[masks]
        w = torch.cat([x.reshape(-1, x.shape[-1]) for x in want])[masks]
        errors[label] = (g - w).pow(2).mean()
    assert errors["fitted"] < 0.5 * errors["plain"]
    ids, mask = batches[1]
    with torch.no_grad():
        assert fitted(ids, mask).shape == tiny(ids, mask).shape
    with pytest.raises(ConfigError, match="needs calibration batches"):
        prune_heads(copy.deepcopy(tiny), 0.5, scores=scores, refit=True)


def test_refit_ignores_dropout_restores_the_mode_and_leaves_the_model_alone_on_bad_input(tiny, tokenizer, sentences):
    batches = _batches(tokenizer, sentences)
    scores = head_contribution(tiny, batches)
    results = []
    for seed in (1, 2):  # in train mode, attention dropout would make the refit's targets random
        model = copy.deepcopy(tiny).train()
        torch.manual_seed(seed)
        prune_heads(model, 0.5, batches, scores=scores, scope="layer", refit=True)
        assert model.training
        results.append(bert_layers(model)[0].attention.output.dense.weight.detach().clone())
    assert torch.equal(results[0], results[1])
    untouched = copy.deepcopy(tiny)
    with pytest.raises(ConfigError, match="ridge"):
        prune_ffn(untouched, 0.5, batches, refit=True, ridge=-1.0)
    with pytest.raises(ConfigError, match="more real calibration tokens"):
        prune_heads(untouched, 0.5, [tokenize(tokenizer, sentences[:1])], refit=True)
    assert [l.intermediate.dense.out_features for l in bert_layers(untouched)] == [64, 64]
    assert [l.attention.self.query.out_features for l in bert_layers(untouched)] == [32, 32]
