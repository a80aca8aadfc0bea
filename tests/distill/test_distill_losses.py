import math

import pytest
import torch

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.distill import (
    attention_map,
    attention_matrix_loss,
    attention_transfer_loss,
    feature_loss,
    hidden_state_loss,
    kd_loss,
    logit_matching_loss,
)


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_a_hand_computed_value():
    s, t, target, T, alpha = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 0, 2.0, 0.5
    p_t = _softmax([v / T for v in t])
    p_s = _softmax([v / T for v in s])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    ce = -math.log(_softmax(s)[target])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([target]), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # on paper: p_t = softmax([1.5, 1, .5]) = [.5065, .3072, .1863], p_s is it reversed, so
    # KL = (.5065 - .1863) * ln(e) = .3202; CE = ln(e + e^2 + e^3) - 1 = 2.4076;
    # .5 * 4 * .3202 + .5 * 2.4076 = 1.8442
    assert expected == pytest.approx(1.8442, abs=2e-4)


def test_kd_loss_limits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, 3.0, 0.0), ce)  # alpha 0: labels only
    assert torch.allclose(kd_loss(s, t, None, 3.0, 0.7), kd_loss(s, t, y, 3.0, 1.0))  # no labels: soft only
    assert kd_loss(t, t, None, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # same logits: no loss


def test_kd_loss_gradient_reaches_only_the_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 0]), 4.0, 0.9).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("T,alpha", [(0.0, 0.5), (-1.0, 0.5), (float("nan"), 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_kd_loss_rejects_bad_settings(T, alpha):
    with pytest.raises(ConfigError):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, T, alpha)


def test_kd_loss_rejects_mismatched_logits():
    with pytest.raises(ModelError, match="does not match"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 5), None, 2.0, 1.0)


def test_logit_matching_matches_a_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[3.0, 2.0, 1.0], [1.0, -1.0, 2.0]])
    # sample 1: (4 + 0 + 4) / (2 * 3) = 4/3; sample 2: (1 + 1 + 4) / 6 = 1; mean 7/6
    assert logit_matching_loss(s, t).item() == pytest.approx(7 / 6, rel=1e-6)
    # blended with the labels: 0.25 * 7/6 + 0.75 * mean CE; CE(s1, 0) = ln(e + e^2 + e^3) - 1, CE(0-logits) = ln 3
    ce = ((math.log(math.e + math.e ** 2 + math.e ** 3) - 1.0) + math.log(3.0)) / 2
    got = kd_loss(s, t, torch.tensor([0, 2]), 5.0, 0.25, soft="logit_mse")
    assert got.item() == pytest.approx(0.25 * 7 / 6 + 0.75 * ce, rel=1e-6)
    assert kd_loss(s, t, None, 5.0, 0.25, soft="logit_mse").item() == pytest.approx(7 / 6, rel=1e-6)


def test_logit_matching_is_the_high_temperature_limit_of_kd():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)  # Hinton's limit assumes zero-mean logits
    high_t = kd_loss(s.double(), t.double(), None, 1000.0, 1.0).item()
    assert high_t == pytest.approx(logit_matching_loss(s, t).item(), rel=2e-3)


def test_logit_matching_gradient_reaches_only_the_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 0]), 1.0, 0.5, soft="logit_mse").backward()
    assert t.grad is None
    # d/ds of mean_n sum_c (s - t)^2 / (2 * 3) over 4 samples is (s - t) / (3 * 4) per entry
    s2 = s.detach().clone().requires_grad_(True)
    logit_matching_loss(s2, t).backward()
    assert torch.allclose(s2.grad, (s - t).detach() / 12)
    assert t.grad is None
    with pytest.raises(ConfigError, match="soft must be"):
        kd_loss(s, t, None, 1.0, 0.5, soft="l2")
    with pytest.raises(ModelError, match="does not match"):
        logit_matching_loss(torch.zeros(2, 10), torch.zeros(2, 5))


def test_feature_losses_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert feature_loss(s, t, "mse").item() == pytest.approx(1 / 4)
    # sample 1: cos = 1/sqrt(2); sample 2: cos = 1
    assert feature_loss(s, t, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
    with pytest.raises(ConfigError):
        feature_loss(s, t, "l7")


def test_attention_transfer_by_hand():
    # one sample, 2 channels, 1x2 map: mean of squares over channels = [ (1+9)/2, (4+0)/2 ] = [5, 2]
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 0.0]]]])  # one channel: map [1, 0]
    q_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    expected = ((q_s[0] - 1) ** 2 + q_s[1] ** 2) / 2
    assert attention_transfer_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(attention_map(s), torch.tensor([q_s]))
    assert attention_transfer_loss(s, 3 * s).item() == pytest.approx(0.0, abs=1e-7)  # scale-free


def test_attention_transfer_pools_the_larger_map():
    s = torch.ones(2, 4, 4, 4)
    t = torch.ones(2, 8, 8, 8)
    assert attention_transfer_loss(s, t).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ModelError):
        attention_transfer_loss(torch.ones(2, 4), torch.ones(2, 4))


def test_hidden_state_loss_with_projection():
    h_s, h_t = torch.ones(2, 3, 4), torch.full((2, 3, 6), 2.0)
    proj = torch.nn.Linear(4, 6, bias=False)
    torch.nn.init.constant_(proj.weight, 0.25)  # every output = 4 * 0.25 = 1
    assert hidden_state_loss(h_s, h_t, proj).item() == pytest.approx(1.0)
    with pytest.raises(ModelError, match="project"):
        hidden_state_loss(h_s, h_t)


def test_attention_matrix_loss_mse_ignores_masked_scores():
    s = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([[[[1.0, float("-inf")], [1.0, 3.0]]]])
    # -inf counts as 0: squared errors 1, 0, 1, 9 -> mean 11/4
    assert attention_matrix_loss(s, t).item() == pytest.approx(11 / 4)
    # only token 0 is real: the one pair (0, 0) remains
    assert attention_matrix_loss(s, t, mask=torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


def test_attention_matrix_loss_kl_by_hand():
    s = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    t = torch.tensor([[[[0.9, 0.1], [0.5, 0.5]]]])
    row = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert attention_matrix_loss(s, t, kind="kl").item() == pytest.approx(row / 2, rel=1e-6)
    with pytest.raises(ModelError):
        attention_matrix_loss(s, torch.zeros(1, 2, 2, 2))
