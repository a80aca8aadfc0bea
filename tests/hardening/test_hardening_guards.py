"""Numerical guards: NaN / inf in weights, gradients and activations are found with the layer named,
and a trainer whose weights go non-finite stops instead of checkpointing garbage."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepshrink.core.errors import DeepShrinkError
from deepshrink.core.guards import (ActivationGuard, NumericalError, check_gradients, check_tensors,
                                    check_weights, scan)
from deepshrink.models import create
from deepshrink.prune.unstructured import prune_layer
from deepshrink.train import Trainer
from deepshrink.train.trainer import TrainConfig


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return create("mlp", in_features=6, hidden=[5, 4], num_classes=3)


def _data(n: int = 32) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_found_with_its_layer(bad):
    model = _mlp()
    check_weights(model)  # clean
    with torch.no_grad():
        model.layers.fc2.weight[1, 2] = bad
    with pytest.raises(NumericalError, match=r"layers\.fc2\.weight") as err:
        check_weights(model, where="after load")
    assert "after load" in str(err.value) and isinstance(err.value, DeepShrinkError)
    found = scan(model.state_dict())
    assert [(f.name, f.nan + f.inf) for f in found] == [("layers.fc2.weight", 1)]


def test_masked_weights_are_checked_too():
    model = _mlp()
    prune_layer(model.layers.fc1, 0.5)
    with torch.no_grad():
        model.layers.fc1.parametrizations.weight.original[0, 0] = math.nan
    with pytest.raises(NumericalError, match=r"layers\.fc1\.parametrizations\.weight\.original"):
        check_weights(model)


def test_non_finite_gradient_is_found_with_its_layer():
    model = _mlp()
    x, y = _data(8).tensors
    nn.functional.cross_entropy(model(x), y).backward()
    check_gradients(model)
    model.layers.fc1.bias.grad[0] = math.inf
    with pytest.raises(NumericalError, match=r"gradients: layers\.fc1\.bias has 0 NaN and 1 inf"):
        check_gradients(model)


def test_activation_guard_names_the_first_layer_that_goes_non_finite():
    model = _mlp()
    x = torch.randn(4, 6)
    with torch.no_grad():
        model.layers.fc2.bias[0] = math.inf  # fc2's output becomes inf, fc3's NaN: fc2 must be named
    msg = r"calibration: non-finite activations: output of layer layers\.fc2"
    with pytest.raises(NumericalError, match=msg):
        with ActivationGuard(model, where="calibration"):
            model(x)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed even on error


def test_activation_guard_flags_non_finite_inputs_and_passes_clean_data():
    model = _mlp()
    with ActivationGuard(model):
        out = model(torch.randn(4, 6))
    assert torch.isfinite(out).all()
    x = torch.randn(4, 6)
    x[2, 1] = math.nan
    with pytest.raises(NumericalError, match=r"input 0 of layer (layers\.fc1|input_dropout)"):
        with ActivationGuard(model):
            model(x)


def test_check_tensors_ignores_integer_and_missing_entries():
    check_tensors({"ids": torch.tensor([1, 2]), "none": None, "ok": torch.ones(2)})
    with pytest.raises(NumericalError, match="codebook"):
        check_tensors({"codebook": torch.tensor([0.0, math.nan])}, what="codebook")


def test_trainer_refuses_to_checkpoint_non_finite_weights(tmp_path):
    """A finite loss whose gradient is NaN (sqrt at 0) poisons the weights on the last step of an epoch;
    before the guard, the trainer saved that checkpoint and returned a NaN model without a word."""
    model = _mlp()

    def poisoned(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = m.layers.fc2.weight
        return nn.functional.cross_entropy(m(x), y) + (w - w.detach()).abs().sqrt().sum()

    ckpt = tmp_path / "ckpt.pt"
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=0)
    msg = r"after epoch 1; training diverged: non-finite weights: layers\.fc2"
    with pytest.raises(NumericalError, match=msg):
        Trainer(model, cfg, loss_fn=poisoned, checkpoint=ckpt, device="cpu").fit(_data())
    assert not ckpt.exists()


def test_trainer_names_the_layer_when_clipped_gradients_are_non_finite():
    model = _mlp()

    def poisoned(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = m.layers.fc3.bias
        return nn.functional.cross_entropy(m(x), y) + (w - w.detach()).abs().sqrt().sum()

    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=0, grad_clip=1.0)
    with pytest.raises(NumericalError, match=r"gradients: layers\.fc3\.bias"):
        Trainer(model, cfg, loss_fn=poisoned, device="cpu").fit(_data())
