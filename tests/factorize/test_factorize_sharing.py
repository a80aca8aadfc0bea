"""Parameter sharing (tying, hashing, one codebook) and artifact round trips of transformed models."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.artifact import load, save
from deepshrink.core.errors import ConfigError, CorruptArtifactError
from deepshrink.factorize import (
    HashedLinear,
    Tied,
    factorize_layer,
    hash_layer,
    replay_transforms,
    share_codebook,
    tie_layers,
    to_depthwise_separable,
    to_grouped_pointwise,
    transforms_of,
)
from deepshrink.factorize.sharing import hash_positions
from deepshrink.measure import count_params
from deepshrink.models import create
from deepshrink.train import TrainConfig, Trainer

X = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
QUICK = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.05, schedule="constant")


def _data(n: int = 48, features: tuple[int, ...] = (1, 28, 28)) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, *features, generator=g), torch.randint(0, 10, (n,), generator=g))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return create("mlp", in_features=784, hidden=[32, 32, 32])


def test_tied_layers_share_parameters_through_training_and_an_artifact(tmp_path):
    model = _mlp()
    before = count_params(model)
    tie_layers(model, "layers.fc2", ["layers.fc3"])
    assert isinstance(model.layers.fc3, Tied)
    assert count_params(model) == before - 32 * 32 - 32
    Trainer(model, QUICK, device="cpu").fit(_data())
    assert model.layers.fc3.target is model.layers.fc2
    path = tmp_path / "tied.dsk"
    report = save(model.eval(), path)
    assert not any(t.name.startswith("layers.fc3") for t in report.tensors)  # stored once
    back = load(path)
    assert back.layers.fc3.target is back.layers.fc2
    torch.testing.assert_close(back(X), model(X))
    assert transforms_of(back) == transforms_of(model)


def test_tie_rejects_mismatched_layers():
    model = _mlp()
    with pytest.raises(ConfigError, match="'layers.fc1'.*cannot be tied"):
        tie_layers(model, "layers.fc2", ["layers.fc1"])
    with pytest.raises(ConfigError, match="itself"):
        tie_layers(model, "layers.fc2", ["layers.fc2"])


def test_hash_positions_are_deterministic_and_balanced():
    idx, sign = hash_positions(10_000, 7, seed=3)
    idx2, sign2 = hash_positions(10_000, 7, seed=3)
    assert torch.equal(idx, idx2) and torch.equal(sign, sign2)
    assert not torch.equal(idx, hash_positions(10_000, 7, seed=4)[0])
    counts = torch.bincount(idx, minlength=7)
    assert counts.min() > 1200 and abs(float(sign.mean())) < 0.05


def test_hashed_layer_stores_only_buckets_and_round_trips(tmp_path):
    model = _mlp()
    layer = hash_layer(model, "layers.fc1", compression=16, seed=5)
    assert isinstance(layer, HashedLinear) and layer.buckets.numel() == 784 * 32 // 16
    assert count_params(layer) == 784 * 32 // 16 + 32
    w = layer.weight
    assert w.shape == (32, 784) and torch.unique(w.abs()).numel() <= layer.buckets.numel()
    Trainer(model, QUICK, device="cpu").fit(_data())
    path = tmp_path / "hashed.dsk"
    report = save(model.eval(), path)
    stored = {t.name: t.numel for t in report.tensors}
    assert stored["layers.fc1.buckets"] == 1568 and "layers.fc1.weight" not in stored
    back = load(path)
    torch.testing.assert_close(back(X), model(X))


def test_hash_layer_initialises_with_the_least_squares_fit():
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(20, 10))
    w = holder[0].weight.detach().clone()
    layer = hash_layer(holder, "0", buckets=200)  # every position its own bucket (if no collisions)
    err_full = (layer.weight - w).norm()
    holder2 = nn.Sequential(nn.Linear(20, 10))
    holder2.load_state_dict({"0.weight": w, "0.bias": torch.zeros(10)})
    err_small = (hash_layer(holder2, "0", buckets=20).weight - w).norm()
    assert err_full < err_small < w.norm()
    with pytest.raises(ConfigError, match="'0'.*buckets"):
        hash_layer(nn.Sequential(nn.Linear(2, 2)), "0", buckets=5)
    with pytest.raises(ConfigError, match="'0'.*Conv2d"):
        hash_layer(nn.Sequential(nn.Conv2d(2, 2, 1)), "0", buckets=2)


def test_one_codebook_across_layers_stays_shared_after_training_and_reload(tmp_path):
    model = _mlp()
    names = ["layers.fc1", "layers.fc2", "layers.fc4"]
    codebook = share_codebook(model, names, bits=4)
    assert codebook.numel() == 16
    params = list(model.parameters())
    assert sum(p is codebook for p in params) == 1  # one trainable tensor for the three layers
    before = codebook.detach().clone()
    Trainer(model, QUICK, device="cpu").fit(_data())
    assert not torch.equal(before, codebook.detach())
    values = set(codebook.detach().tolist())
    for n in names:
        assert set(torch.unique(model.get_submodule(n).weight.detach()).tolist()) <= values
    path = tmp_path / "codebook.dsk"
    report = save(model.eval(), path)
    assert {t.name: t.encoding for t in report.tensors}["layers.fc1.weight"] in ("codebook", "sparse")
    back = load(path)
    torch.testing.assert_close(back(X), model(X))
    for n in names:
        assert set(torch.unique(back.get_submodule(n).weight).tolist()) <= values


def test_share_codebook_rejects_bad_layers():
    model = create("lenet5")
    with pytest.raises(ConfigError, match="bits"):
        share_codebook(model, ["fc1"], bits=0)
    with pytest.raises(ConfigError, match="'nope'"):
        share_codebook(model, ["fc1", "nope"], bits=2)


def test_factorized_and_substituted_model_round_trips_through_an_artifact(tmp_path):
    torch.manual_seed(0)
    model = create("lenet5", conv_relu=True)
    factorize_layer(model, "fc1", rank=16)
    factorize_layer(model, "fc2", rank=4)
    to_depthwise_separable(model, "conv2", multiplier=2)
    factorize_layer(model, "conv1", method="tucker2", rank=(6, 1))
    model.eval()
    path = tmp_path / "f.dsk"
    save(model, path)
    back = load(path)
    torch.testing.assert_close(back(X), model(X))
    assert transforms_of(back) == transforms_of(model)
    assert [n for n, _ in back.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_mobilenet_grouped_pointwise_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create("mobilenet_tiny", width=0.5)
    to_grouped_pointwise(model, "blocks.1.1.0", groups=4)
    model.eval()
    save(model, tmp_path / "m.dsk")
    torch.testing.assert_close(load(tmp_path / "m.dsk")(X), model(X))


def test_malformed_transforms_are_clear_errors(tmp_path):
    fresh = create("lenet5")
    with pytest.raises(ConfigError, match="'fc1'.*out of range"):
        replay_transforms(fresh, [{"op": "svd", "layer": "fc1", "rank": 10**9}])
    with pytest.raises(Exception, match="unknown factorize op"):
        replay_transforms(create("lenet5"), [{"op": "exec", "layer": "fc1"}])
    model = create("lenet5")
    factorize_layer(model, "fc1", rank=3)
    model._deepshrink_arch["transforms"][0]["rank"] = 4  # arch record disagrees with the tensors
    save(model, tmp_path / "bad.dsk")
    with pytest.raises(CorruptArtifactError):
        load(tmp_path / "bad.dsk")
