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


def test_attention_lstm_and_int8_wrappers_are_counted() -> None:
    import torch.nn.functional as F

    from deepshrink.measure import count_macs

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(1, 5, 16)
    # in-proj 5 x 16 x 48, scores and context 2 x 5 x 5 x 16, out-proj 5 x 16 x 16 (the fused fast path is off)
    assert count_macs(lambda t: mha(t, t, t, need_weights=False)[0], (x,)) == 5 * 16 * 48 + 2 * 5 * 5 * 16 + 5 * 16 * 16
    lstm = torch.nn.LSTM(10, 20).eval()
    assert count_macs(lstm, (torch.randn(5, 1, 10),)) == 5 * (80 * 10 + 80 * 20)
    q = torch.randn(1, 4, 16, 8)
    assert count_macs(lambda a: F.scaled_dot_product_attention(a, a, a), (q,)) == 4 * 2 * 16 * 16 * 8
    assert torch.backends.mha.get_fastpath_enabled()  # restored

    from deepshrink.quantize.backends import to_int8

    mlp = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    int8 = to_int8(mlp, torch.randn(32, 64))
    assert count_macs(int8, (torch.randn(1, 64),)) == count_macs(mlp, (torch.randn(1, 64),)) == 64 * 32 + 32 * 10
