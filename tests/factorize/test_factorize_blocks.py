"""Depthwise-separable and grouped-pointwise substitution, and the compact zoo models."""

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize import (
    ChannelShuffle,
    PointwiseConv2d,
    max_multiplier,
    to_depthwise_separable,
    to_grouped_pointwise,
)
from deepshrink.measure import count_macs, count_params
from deepshrink.models import available, create


def _conv(cin=6, cout=10, k=3, **kw) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, cout, k, **kw))


def test_pointwise_conv_matches_a_1x1_conv():
    torch.manual_seed(0)
    pw = PointwiseConv2d(5, 7)
    ref = nn.Conv2d(5, 7, 1)
    ref.load_state_dict(pw.state_dict())
    x = torch.randn(3, 5, 6, 4)
    torch.testing.assert_close(pw(x), ref(x), atol=1e-6, rtol=1e-5)
    last = x.contiguous(memory_format=torch.channels_last)
    out = pw(last)  # the channels-last path: one linear over the N x H x W x C view
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_depthwise_separable_lenet5_runs_channels_last():
    torch.manual_seed(0)
    model = create("lenet5").eval()
    for name, m in (("conv1", 4), ("conv2", 1)):
        to_depthwise_separable(model, name, multiplier=m)
    x = torch.randn(2, 1, 28, 28)
    want = model(x)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"padding": 2, "dilation": 2}])
def test_depthwise_separable_at_full_multiplier_is_exact(kw):
    model = _conv(**kw)
    x = torch.randn(2, 6, 13, 13)
    ref = model(x)
    block = to_depthwise_separable(model, "0", multiplier=max_multiplier(nn.Conv2d(6, 10, 3)))
    assert block[0].groups == 6 and block[0].out_channels == 6 * 9
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_multiplier_one_is_mobilenet_block_with_best_rank1_init_and_same_shape():
    model = _conv(20, 50, 5)
    x = torch.randn(2, 20, 12, 12)
    ref = model(x)
    before = count_macs(model, x[:1])
    block = to_depthwise_separable(model, "0")
    assert model(x).shape == ref.shape
    assert count_params(block) == 20 * 25 + 50 * 20 + 50
    assert count_macs(model, x[:1]) * 10 < before
    err1 = (model(x) - ref).norm()
    model2 = _conv(20, 50, 5)
    to_depthwise_separable(model2, "0", multiplier=4)
    assert (model2(x) - ref).norm() < err1  # more filters per channel: closer to the original


def test_lenet5_substitution_keeps_output_shape():
    torch.manual_seed(0)
    model = create("lenet5").eval()
    x = torch.randn(3, 1, 28, 28)
    to_depthwise_separable(model, "conv1", multiplier=4)
    to_depthwise_separable(model, "conv2")
    assert model(x).shape == (3, 10)


def test_grouped_pointwise_keeps_channel_order_and_is_exact_for_grouped_weights():
    model = _conv(6, 9, 1)
    with torch.no_grad():  # after the shuffle, output q reads input group q % 3
        mask = torch.zeros(9, 6)
        for q in range(9):
            mask[q, 2 * (q % 3):2 * (q % 3) + 2] = 1
        model[0].weight.mul_(mask[:, :, None, None])
    x = torch.randn(2, 6, 5, 5)
    ref = model(x)
    block = to_grouped_pointwise(model, "0", groups=3)
    assert isinstance(block[1], ChannelShuffle) and block[0].groups == 3
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_bad_substitutions_name_the_layer():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Linear(3, 3), nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ConfigError, match="'0'.*1..8"):
        to_depthwise_separable(model, "0", multiplier=9)
    with pytest.raises(ConfigError, match="'0'.*1..8"):
        to_depthwise_separable(model, "0", multiplier=0)
    with pytest.raises(ConfigError, match="'1'.*Linear"):
        to_depthwise_separable(model, "1")
    with pytest.raises(ConfigError, match="'2'.*grouped"):
        to_depthwise_separable(model, "2")
    with pytest.raises(ConfigError, match="'0'.*1x1"):
        to_grouped_pointwise(model, "0", groups=2)
    with pytest.raises(ConfigError, match="'0'.*divide"):
        to_grouped_pointwise(nn.Sequential(nn.Conv2d(4, 6, 1)), "0", groups=4)


@pytest.mark.parametrize("name", ["mobilenet_tiny", "shufflenet_tiny"])
def test_compact_zoo_models_are_small_and_train(name):
    assert name in available()
    torch.manual_seed(0)
    model = create(name)
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    assert count_params(model) < 25_000
    assert count_macs(model, x[:1]) < 2_293_000 / 3  # LeNet-5's MACs
    loss = nn.functional.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    wide = create(name, width=2.0, num_classes=3)
    assert wide(x).shape == (4, 3) and count_params(wide) > count_params(model)
