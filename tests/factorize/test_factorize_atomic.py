"""Factorization that cannot be done leaves the model as it was, with one error naming the layer; and
substitutions that would silently break a model (tie sources, attention internals, shuffled blocks) are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize import FactorSpec, factorize, factorize_layer, fold_bn, hash_layer, tie_layers
from deepshrink.factorize import to_grouped_pointwise, transforms_of
from deepshrink.models import create


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert transforms_of(model) == []


def test_a_tucker_rank_beyond_the_unfolding_is_refused_and_the_layer_kept():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="layer '0': rank 12 is out of range 1..9"):
        factorize_layer(m, "0", method="tucker2", rank=(12, 1))
    _unchanged(m, before)


def test_non_finite_weights_are_refused_before_the_layer_is_replaced():
    m = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        factorize_layer(m, "0", method="svd", rank=2)
    assert isinstance(m[0], nn.Linear)


def test_a_plan_or_a_tie_that_fails_half_way_changes_nothing():
    m = create("lenet5")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="fc2"):
        factorize(m, {"fc1": FactorSpec(compression=4), "fc2": FactorSpec(rank=16)})
    _unchanged(m, before)
    t = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot be tied"):
        tie_layers(t, "0", ["1", "2"])
    _unchanged(t, before)


def test_a_tie_source_and_attention_internals_cannot_be_substituted():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tie_layers(m, "0", ["2"])
    with pytest.raises(ConfigError, match="source of tied layer"):
        factorize_layer(m, "0", method="svd", rank=2)
    enc = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    with pytest.raises(ConfigError, match="reads its weight directly"):
        factorize_layer(enc, "0.linear1", method="svd", rank=2)


def test_a_batch_norm_is_not_folded_through_a_channel_shuffle():
    m = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    to_grouped_pointwise(m, "0", groups=2)
    with pytest.raises(ConfigError, match="ChannelShuffle"):
        fold_bn(m, [("0", "1")])


def test_hashing_keeps_the_model_dtype_and_bounds_the_seed():
    m = nn.Sequential(nn.Linear(6, 4)).double()
    hash_layer(m, "0", buckets=8)
    assert m(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ConfigError, match="seed"):
        hash_layer(nn.Sequential(nn.Linear(6, 4)), "0", buckets=8, seed=2**70)
