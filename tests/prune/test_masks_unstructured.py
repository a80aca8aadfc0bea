import pytest
import torch

from deepshrink.core.errors import ConfigError
from deepshrink.prune.masks import get_mask, remove_masks, set_mask
from deepshrink.prune.unstructured import magnitude_mask, prune_layer, std_threshold_mask


def test_magnitude_mask_keeps_the_largest_entries():
    w = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    mask = magnitude_mask(w, keep=0.5)
    assert mask.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_std_threshold_prunes_below_quality_times_std():
    torch.manual_seed(0)
    w = torch.randn(100, 100)
    mask = std_threshold_mask(w, 1.0)
    std = w.std()
    assert torch.equal(mask.bool(), w.abs() > std)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan")])
def test_impossible_kept_fraction_is_refused(keep):
    with pytest.raises(ConfigError, match="kept fraction"):
        magnitude_mask(torch.ones(4, 4), keep)


def test_mask_is_honoured_through_training_and_permanent_after_removal():
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10)
    prune_layer(layer, 0.25)
    mask = get_mask(layer)
    assert int(mask.sum()) == 50
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(8, 20)).pow(2).sum().backward()
        opt.step()
    assert torch.all(layer.weight[mask == 0] == 0)
    remove_masks(layer)
    assert isinstance(layer.weight, torch.nn.Parameter)
    assert int((layer.weight != 0).sum()) == 50
    assert "weight" in dict(layer.named_parameters())


def test_iterative_pruning_is_monotone():
    torch.manual_seed(0)
    layer = torch.nn.Linear(50, 50)
    prune_layer(layer, 0.5)
    first = get_mask(layer).clone()
    with torch.no_grad():  # make a pruned position's original weight huge: it must stay pruned
        layer.parametrizations.weight.original[first == 0] = 100.0
    prune_layer(layer, 0.2)
    second = get_mask(layer)
    assert int(second.sum()) == 500
    assert torch.all(second <= first)


def test_mask_of_wrong_shape_is_refused():
    with pytest.raises(ConfigError, match="mask shape"):
        set_mask(torch.nn.Linear(3, 3), torch.ones(2, 2))
