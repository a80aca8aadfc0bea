"""Batch-norm folding (recorded, so artifacts reload folded), channels-last, and feature-distillation recovery."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.artifact import load, save
from deepshrink.core.errors import ConfigError
from deepshrink.factorize import channels_last, fold_bn, recover_features, to_depthwise_separable, transforms_of
from deepshrink.models import create
from deepshrink.train import TrainConfig


def _with_bn_stats(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters (a fresh BN folds to identity)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_fold_bn_on_a_converted_cnn_keeps_outputs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create("cnn")
    to_depthwise_separable(model, "conv2")
    model = _with_bn_stats(model)
    x = torch.randn(3, 1, 28, 28)
    want = model(x)
    assert fold_bn(model, [("conv2", "bn2"), ("conv1", "bn1")]) == [("conv2", "bn2"), ("conv1", "bn1")]
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn2, nn.Identity)
    assert model.conv2[1].bias is not None
    assert [t["op"] for t in transforms_of(model)] == ["dwsep", "fold_bn", "fold_bn"]
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)
    save(model, tmp_path / "m.dsk")
    loaded = load(tmp_path / "m.dsk").eval()
    assert isinstance(loaded.bn2, nn.Identity)
    torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-4)
    channels_last(loaded)
    torch.testing.assert_close(loaded(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5, rtol=1e-4)


def test_fold_bn_finds_conv_bn_pairs_in_compact_models():
    model = _with_bn_stats(create("mobilenet_tiny"))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 1, 28, 28)
    want = model(x)
    assert len(fold_bn(model)) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)


def test_fold_bn_rejects_bad_pairs_before_changing_anything():
    model = create("cnn").eval()
    with pytest.raises(ConfigError, match="fc1"):
        fold_bn(model, [("conv1", "bn1"), ("conv2", "fc1")])
    assert isinstance(model.bn1, nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="features"):
        fold_bn(model, [("conv1", "bn2")])


def test_recover_features_pulls_the_block_towards_the_original_layer():
    torch.manual_seed(0)
    teacher = create("lenet5").eval()
    student = copy.deepcopy(teacher)
    to_depthwise_separable(student, "conv2")
    x = torch.randn(128, 1, 28, 28)
    data = TensorDataset(x, teacher(x).argmax(1).detach())

    def gap() -> float:
        with torch.no_grad():
            return (student.conv2(teacher.conv1(x)) - teacher.conv2(teacher.conv1(x))).pow(2).mean().item()

    before = gap()
    cfg = TrainConfig(epochs=5, batch_size=32, optimizer="adam", lr=1e-3)
    recover_features(student, teacher, data, cfg, ["conv2"], feature_weight=10.0, device="cpu", progress=False)
    assert gap() < before
    with pytest.raises(ConfigError):
        recover_features(student, teacher, data, cfg, [], device="cpu")
