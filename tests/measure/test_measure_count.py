"""Parameter / non-zero counts against values worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deepshrink.core.errors import ModelError
from deepshrink.measure import count_nonzeros, count_params, fp32_bytes, layer_stats


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))


def test_params_of_known_sequential() -> None:
    # Linear(10,5): 50 weights + 5 biases; Linear(5,2): 10 + 2  -> 67
    assert count_params(_mlp()) == 67
    assert fp32_bytes(_mlp()) == 268


def test_tied_weights_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=True)
            self.out.weight = self.embed.weight  # same (10, 4) tensor

    # 40 shared weights once + 10 output biases
    model = Tied()
    assert count_params(model) == 50
    assert count_nonzeros(model) == 50  # random normal init has no exact zeros


def test_nonzeros_after_zeroing() -> None:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(2.0)
        lin.weight[0, :3] = 0.0
        lin.weight[2, 1:3] = 0.0
    # 12 weights - 5 zeros + 3 biases
    assert count_nonzeros(lin) == 10
    assert count_params(lin) == 15


def test_nonzeros_with_torch_prune_mask() -> None:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.weight[1, 0] = 0.0  # a zero the mask keeps
        lin.bias.fill_(1.0)
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    prune.custom_from_mask(lin, "weight", mask)
    assert hasattr(lin, "weight_orig") and hasattr(lin, "weight_mask")
    # kept by mask: (0,0), (1,0), (1,1); (1,0) is itself zero -> 2 weights + 2 biases
    assert count_nonzeros(lin) == 4
    # weight_orig still stores all 6 weights
    assert count_params(lin) == 8


def test_nonzeros_with_plain_mask_buffer() -> None:
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    lin.register_buffer("weight_mask", torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert count_nonzeros(lin) == 1


def test_mask_shape_mismatch_is_model_error() -> None:
    lin = nn.Linear(2, 2, bias=False)
    lin.register_buffer("weight_mask", torch.ones(3, 3))
    with pytest.raises(ModelError, match="weight"):
        count_nonzeros(lin)


def test_layer_stats() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
        model[2].bias.fill_(1.0)
        model[2].weight[0, :] = 0.0  # 5 of 10 weights zero
    stats = layer_stats(model)
    assert [s.name for s in stats] == ["0", "2"]
    assert [s.type for s in stats] == ["Linear", "Linear"]
    assert stats[0].shape == (5, 10)
    assert stats[1].shape == (2, 5)
    assert stats[0].params == 55 and stats[1].params == 12
    assert stats[1].nonzeros == 7
    assert stats[1].sparsity == pytest.approx(5 / 12)
    assert stats[1].weight_sparsity == pytest.approx(0.5)


def test_layer_stats_sees_pruned_weight() -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    prune.custom_from_mask(model[0], "weight", torch.eye(4))
    (stat,) = layer_stats(model)
    assert stat.shape == (4, 4)
    assert stat.nonzeros == 4
    assert stat.weight_sparsity == pytest.approx(12 / 16)


def test_non_module_rejected() -> None:
    with pytest.raises(ModelError):
        count_params(lambda x: x)  # type: ignore[arg-type]


class _MaskParam(nn.Module):
    """Minimal weight * mask parametrization, as a pruning step would register."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_parametrized_mask_counts_effective_weight() -> None:
    from torch.nn.utils import parametrize

    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    # original stays all ones; only the mask hides 4 of the 6 weights
    mask = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    parametrize.register_parametrization(model[0], "weight", _MaskParam(mask))
    # 6 + 2 + 4 + 2 stored elements; the mask buffer is not a parameter
    assert count_params(model) == 14
    assert count_nonzeros(model) == 14 - 4
    stats = layer_stats(model)
    assert [s.name for s in stats] == ["0", "2"]
    assert stats[0].type == "Linear"  # not the generated ParametrizedLinear class
    assert stats[0].params == 8 and stats[0].nonzeros == 4
    assert stats[0].weight_sparsity == pytest.approx(4 / 6)


def test_weight_sharing_keeps_every_weight_a_parameter() -> None:
    from deepshrink.quantize.kmeans import share_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    before = count_params(model)
    share_weights(model[0], 3)  # the layer now stores 8 centroids and an index per weight
    assert count_params(model) == before  # was 8 + biases + the other layer: fewer "params" than non-zeros
    assert count_nonzeros(model) <= count_params(model)
