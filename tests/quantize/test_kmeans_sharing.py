import numpy as np
import pytest
import torch

from deepshrink.core.errors import ConfigError
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import prune_layer
from deepshrink.quantize.kmeans import kmeans_1d, remove_sharing, share_weights, shared_codebook


def test_kmeans_finds_well_separated_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.2, 3.0)])
    centroids, assign = kmeans_1d(values, 3)
    np.testing.assert_allclose(centroids, [-1.0, 0.2, 3.0], atol=0.01)
    for j in range(3):  # each centroid is the mean of its members
        np.testing.assert_allclose(centroids[j], values[assign == j].mean())


def test_linear_init_spans_min_to_max():
    values = np.array([0.0, 0.0, 0.0, 0.0, 10.0])
    centroids, _ = kmeans_1d(values, 2, iters=0)
    assert centroids.tolist() == [0.0, 10.0]


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_sharing_keeps_pruned_weights_zero_and_uses_at_most_2_pow_bits_values(bits):
    torch.manual_seed(bits)
    layer = torch.nn.Linear(40, 30)
    prune_layer(layer, 0.3)
    remove_masks(layer)
    zeros = layer.weight == 0
    share_weights(layer, bits)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    for _ in range(3):  # centroid fine-tuning
        opt.zero_grad()
        layer(torch.randn(16, 40)).pow(2).mean().backward()
        opt.step()
    w = layer.weight.detach()
    assert torch.all(w[zeros] == 0)
    assert torch.unique(w[~zeros]).numel() <= 2**bits
    remove_sharing(layer)
    assert torch.unique(layer.weight[~zeros]).numel() <= 2**bits


def test_centroid_gradient_is_the_sum_of_member_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4, bias=False)
    share_weights(layer, 1)
    codebook, assign = shared_codebook(layer)
    x = torch.randn(5, 6)
    layer(x).sum().backward()
    dense_grad = torch.ones(5, 4).T @ x  # dL/dW for L = sum(W x)
    grad = layer.parametrizations.weight.original.grad
    for j in range(codebook.numel()):
        assert torch.allclose(grad[j], dense_grad[assign == j].sum(), atol=1e-5)


def test_bad_bits_are_refused():
    with pytest.raises(ConfigError, match="bits"):
        share_weights(torch.nn.Linear(3, 3), 0)
