"""Binary (BinaryConnect / XNOR scale) and ternary (TWN) weights trained with the straight-through estimator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink.quantize as Q
from deepshrink.core.errors import ConfigError
from deepshrink.quantize.modules import quantized_weight
from deepshrink.quantize.qat import FakeBinaryWeight, FakeTernaryWeight


def _toy(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), x, y


def test_binary_forward_values_and_ste_gradient() -> None:
    fq = FakeBinaryWeight()
    w = torch.tensor([[0.5, -0.1, 0.0, -2.0], [0.2, 0.2, -0.2, 0.4]], requires_grad=True)
    out = fq(w)
    alpha = torch.tensor([[2.6 / 4], [1.0 / 4]])  # mean |w| per row, by hand
    expected = alpha * torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0]])
    assert torch.allclose(out, expected)
    out.sum().backward()
    # Through sign: identity where |w| <= 1, zero where clipped (-2.0); plus alpha's own gradient.
    assert w.grad is not None and float(w.grad[0, 3].abs()) < float(w.grad[0, 0].abs())
    grad_alpha_row1 = float(expected[1].sign().sum()) / 4  # d(sum alpha s)/dw through alpha = sum(s) sign(w)/K
    assert torch.allclose(w.grad[1], torch.full((4,), float(alpha[1])) * 0 + 1.0 * float(alpha[1])
                          + grad_alpha_row1 * torch.tensor([1.0, 1.0, -1.0, 1.0]))


def test_ternary_forward_is_twn_and_gradient_is_identity() -> None:
    fq = FakeTernaryWeight(threshold=0.7)
    w = torch.tensor([[1.0, -0.1, 0.6, -0.9]], requires_grad=True)  # mean |w| = 0.65, delta = 0.455
    out = fq(w)
    alpha = (1.0 + 0.6 + 0.9) / 3
    assert torch.allclose(out, torch.tensor([[alpha, 0.0, alpha, -alpha]]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("cfg", [Q.BinaryConfig(trainable=True), Q.TernaryConfig(trainable=True)])
def test_training_learns_and_freeze_keeps_outputs(cfg: Q.QuantConfig) -> None:
    model, x, y = _toy()
    q = Q.quantize(model, cfg)
    opt = torch.optim.Adam(q.parameters(), lr=3e-2)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        first = float(loss_fn(q(x), y))
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(q(x), y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first  # the weights really learn through the STE
    q.eval()
    with torch.no_grad():
        before = q(x)
        Q.freeze(q)
        after = q(x)
    assert torch.equal(before, after)
    qw = quantized_weight(q[0])
    assert qw is not None and qw.bits == (1 if isinstance(cfg, Q.BinaryConfig) else 2)
    assert len(torch.unique(q[0].weight[0])) <= (2 if qw.bits == 1 else 3)


def test_trainable_config_validation() -> None:
    with pytest.raises(ConfigError, match="trainable"):
        Q.BinaryConfig(trainable="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per_tensor or per_channel"):
        Q.TernaryConfig(granularity="per_group")
    model, _, _ = _toy()
    q = Q.quantize(model, Q.BinaryConfig(trainable=True))
    with pytest.raises(ConfigError, match="already quantized"):
        Q.quantize(q, Q.TernaryConfig())
