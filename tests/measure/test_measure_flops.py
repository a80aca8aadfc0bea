"""MAC counts against hand-computed values (multiplies in matmul/conv only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ModelError
from deepshrink.measure import count_macs, count_macs_by_module


def test_linear_macs() -> None:
    # batch 4, in 10, out 5 -> 4 * 10 * 5
    assert count_macs(nn.Linear(10, 5), torch.randn(4, 10)) == 200


def test_conv2d_macs() -> None:
    # out 8 channels x 8 x 8 positions, each 3*3*3 multiplies, batch 2
    conv = nn.Conv2d(3, 8, kernel_size=3)
    assert count_macs(conv, torch.randn(2, 3, 10, 10)) == 2 * 8 * 8 * 8 * 27


def test_depthwise_conv_macs() -> None:
    # 4 channels x 4 x 4 outputs, each 3*3 multiplies (one input channel per group)
    conv = nn.Conv2d(4, 4, kernel_size=3, groups=4)
    assert count_macs(conv, torch.randn(1, 4, 6, 6)) == 4 * 4 * 4 * 9


def test_macs_by_module_and_tuple_inputs() -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    per = count_macs_by_module(model, (torch.randn(3, 10),))
    assert per == {"": 3 * 10 * 5 + 3 * 5 * 2, "0": 150, "2": 30}


def test_training_flags_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()  # deliberately frozen submodule must stay frozen
    count_macs(model, torch.randn(2, 4))
    assert model.training is True
    assert model[0].training is True
    assert model[1].training is False


def test_runs_under_no_grad_in_eval_mode() -> None:
    seen: dict[str, bool] = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["grad"] = torch.is_grad_enabled()
            seen["training"] = self.training
            return x

    count_macs(Probe(), torch.zeros(1))
    assert seen == {"grad": False, "training": False}


def test_bad_input_is_one_line_model_error() -> None:
    with pytest.raises(ModelError) as info:
        count_macs(nn.Linear(10, 5), torch.randn(4, 7))
    assert "\n" not in str(info.value)
