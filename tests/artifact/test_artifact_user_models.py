"""Artifacts of models that ``deepshrink.models.create`` did not build, and re-saving loaded models.

Such a model's artifact records only its class (or the CLI's ``package.module:factory``); it loads into a
model the caller builds, ``deepshrink.load(path, model=...)``, never from code named in the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.core.errors import ArtifactError, ConfigError, ModelError
from deepshrink.factorize import FactorSpec, factorize
from deepshrink.models import create
from deepshrink.prune.structured import structured


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc1 = nn.Linear(6 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _net(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


X = torch.randn(4, 1, 14, 14, generator=torch.Generator().manual_seed(0))


def test_a_user_model_saves_and_loads_only_into_a_model_the_caller_builds(tmp_path):
    net = _net(0)
    deepshrink.save(net, tmp_path / "n.dsk")
    assert not hasattr(net, "_deepshrink_arch")  # saving does not mark the caller's model
    with pytest.raises(ArtifactError, match=r"holds a model of your own \(.*Net\).*model=") as info:
        deepshrink.load(tmp_path / "n.dsk")
    assert "Corrupt" not in type(info.value).__name__
    back = deepshrink.load(tmp_path / "n.dsk", model=_net(1))
    assert torch.equal(back(X), net(X))


def test_a_structurally_pruned_user_model_loads_into_the_unpruned_architecture(tmp_path):
    pruned = structured(_net(0), X[:1], ratio=0.5)
    assert pruned.fc1.out_features < 32
    deepshrink.save(pruned, tmp_path / "p.dsk")
    back = deepshrink.load(tmp_path / "p.dsk", model=_net(1))
    assert back.fc1.out_features == pruned.fc1.out_features
    assert torch.equal(back(X), pruned(X))


def test_a_factorized_user_model_loads_into_the_original_architecture(tmp_path):
    net = _net(0)
    factorize(net, {"fc1": FactorSpec(rank=4)})
    deepshrink.save(net, tmp_path / "f.dsk")
    back = deepshrink.load(tmp_path / "f.dsk", model=_net(1))
    assert isinstance(back.fc1, nn.Sequential)
    assert torch.equal(back(X), net(X))


def test_the_wrong_architecture_or_no_module_is_a_clear_error(tmp_path):
    deepshrink.save(_net(0), tmp_path / "n.dsk")
    with pytest.raises(ModelError, match="does not fit the Sequential passed as model=.*tensors do not match"):
        deepshrink.load(tmp_path / "n.dsk", model=nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="model must be an nn.Module"):
        deepshrink.load(tmp_path / "n.dsk", model="Net")


def test_a_loaded_structurally_pruned_zoo_model_saves_again_and_reloads(tmp_path):
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    pruned = structured(create("lenet5"), x, ratio=0.5)
    deepshrink.save(pruned, tmp_path / "a.dsk")
    first = deepshrink.load(tmp_path / "a.dsk")
    deepshrink.save(first, tmp_path / "b.dsk")  # lost its resized layers' record before: b.dsk did not load
    second = deepshrink.load(tmp_path / "b.dsk")
    assert torch.equal(second(x), pruned(x))


@pytest.mark.parametrize("steps", [("prune", "factorize"), ("factorize", "prune"), ("prune", "factorize", "prune")])
def test_structured_pruning_and_factorization_replay_in_the_order_they_happened(tmp_path, steps):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = create("lenet300").eval()
    for i, step in enumerate(steps):
        if step == "prune":
            model = structured(model, x[:1], ratio=0.3)
        else:
            factorize(model, {"fc1": FactorSpec(rank=8)})
    deepshrink.save(model, tmp_path / f"m{i}.dsk")
    back = deepshrink.load(tmp_path / f"m{i}.dsk")
    assert torch.equal(back(x), model(x))
