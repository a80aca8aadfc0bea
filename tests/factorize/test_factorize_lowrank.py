"""Truncated SVD and Tucker-2 factorization: exactness at full rank, ranks and parameter counts, errors."""

import copy

import pytest
import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize import FactorSpec, factorize, factorize_layer, rank_for_energy, svd_params, transforms_of
from deepshrink.models import create

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _lenet5() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet5").eval()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_rank_svd_reproduces_linear_and_conv_exactly():
    model = _lenet5()
    ref = model(X)
    factorize_layer(model, "fc1", rank=500)
    factorize_layer(model, "fc2", rank=10)
    factorize_layer(model, "conv2", rank=50)
    factorize_layer(model, "conv1", rank=20)
    torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-5)
    assert [t["op"] for t in transforms_of(model)] == ["svd"] * 4


def test_full_rank_tucker2_reproduces_conv_exactly_with_stride_and_padding():
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=1))
    x = torch.randn(4, 6, 11, 11)
    ref = conv(x)
    block = factorize_layer(conv, "0", method="tucker2", rank=(10, 6))
    assert [tuple(m.weight.shape) for m in block] == [(6, 6, 1, 1), (10, 6, 3, 3), (10, 10, 1, 1)]
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_truncated_svd_is_the_best_rank_r_approximation():
    torch.manual_seed(2)
    holder = nn.Sequential(nn.Linear(30, 20))
    w = holder[0].weight.detach().clone()
    block = factorize_layer(holder, "0", rank=5)
    approx = block[1].weight @ block[0].weight
    s = torch.linalg.svdvals(w.double())
    err = torch.linalg.matrix_norm((approx - w).double())
    torch.testing.assert_close(err, s[5:].pow(2).sum().sqrt(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rank", [1, 7, 40])
def test_rank_and_parameter_count_as_requested(rank):
    model = nn.Sequential(nn.Linear(80, 50), nn.ReLU(), nn.Conv2d(3, 8, 3))
    block = factorize_layer(model, "0", rank=rank)
    assert block[0].weight.shape == (rank, 80) and block[1].weight.shape == (50, rank)
    assert _params(block) == rank * (80 + 50) + 50 == svd_params(nn.Linear(80, 50), rank)
    conv = factorize_layer(model, "2", rank=min(rank, 8))
    r = min(rank, 8)
    assert conv[0].weight.shape == (r, 3, 3, 3) and conv[1].weight.shape == (8, r, 1, 1)
    assert _params(conv) == r * (27 + 8) + 8
    assert model[0](torch.randn(2, 80)).shape == (2, 50)


def test_compression_budget_gives_at_least_that_many_times_fewer_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 100), nn.Conv2d(20, 50, 5))
    before = _params(model[0])
    block = factorize_layer(model, "0", compression=4)
    assert block[0].out_features == 16  # floor((20100 / 4 - 100) / 300)
    assert before / _params(block) >= 4
    conv_before = _params(model[1])
    tucker = factorize_layer(model, "1", method="tucker2", compression=3)
    assert conv_before / _params(tucker) >= 3
    assert model[1](torch.randn(1, 20, 8, 8)).shape == (1, 50, 4, 4)


def test_energy_rank_on_known_singular_values():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 16 / 30) == 1
    assert rank_for_energy(s, 0.8) == 2
    assert rank_for_energy(s, 0.85) == 3
    assert rank_for_energy(s, 1.0) == 4
    # the same through a layer built with exactly those singular values
    q1, _ = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)))
    q2, _ = torch.linalg.qr(torch.randn(5, 4, generator=torch.Generator().manual_seed(4)))
    holder = nn.Sequential(nn.Linear(5, 6))
    with torch.no_grad():
        holder[0].weight.copy_(q1 @ torch.diag(s) @ q2.T)
    assert factorize_layer(holder, "0", energy=0.85)[0].out_features == 3


def test_factorize_plan_checks_every_name_first():
    model = _lenet5()
    with pytest.raises(ConfigError, match="nope"):
        factorize(model, {"fc1": FactorSpec(rank=10), "nope": FactorSpec(rank=3)})
    assert isinstance(model.fc1, nn.Linear)  # untouched
    factorize(model, {"fc1": FactorSpec(rank=10), "conv2": FactorSpec(method="tucker2", energy=0.9)})
    assert model(X).shape == (8, 10)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "'fc1'.*out of range 1..500"),
    ({"rank": 501}, "'fc1'.*out of range 1..500"),
    ({"rank": 2.5}, "'fc1'.*integer"),
    ({"energy": 0.0}, "energy"),
    ({"compression": 0.5}, "compression"),
    ({"rank": 3, "energy": 0.9}, "exactly one"),
    ({"compression": 1e6}, "'fc1'.*no room"),
    ({"method": "qr", "rank": 3}, "svd or tucker2"),
])
def test_bad_ranks_are_config_errors_naming_the_layer(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        factorize_layer(_lenet5(), "fc1", **kwargs)


def test_layers_that_cannot_be_factorized_are_named():
    model = _lenet5()
    with pytest.raises(ConfigError, match="'fc1'.*tucker2"):
        factorize_layer(model, "fc1", method="tucker2", rank=3)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
    with pytest.raises(ConfigError, match="'0'.*grouped"):
        factorize_layer(grouped, "0", rank=2)
    with pytest.raises(ConfigError, match="'1'.*ReLU"):
        factorize_layer(grouped, "1", rank=2)
    with pytest.raises(ConfigError, match="not found"):
        factorize_layer(model, "fc9", rank=2)
    factorize_layer(model, "fc1", rank=4)
    with pytest.raises(ConfigError, match="'fc1'.*Sequential"):
        factorize_layer(model, "fc1", rank=2)


def test_factorized_model_trains_and_deepcopies():
    model = _lenet5().train()
    factorize_layer(model, "fc1", rank=8)
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(X), torch.arange(8))
    loss.backward()
    opt.step()
    assert not torch.equal(model.fc1[0].weight, clone.fc1[0].weight)
    assert transforms_of(clone) == transforms_of(model)


def test_kd_loss_and_recover():
    from deepshrink.factorize import kd_loss, recover
    from deepshrink.train import TrainConfig

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    student = copy.deepcopy(teacher)
    y = torch.arange(8)
    ce = nn.functional.cross_entropy(student(X), y)
    torch.testing.assert_close(kd_loss(teacher, alpha=0.25)(student, X, y), 0.75 * ce)  # KL(p || p) = 0
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(teacher, alpha=2.0)
    factorize_layer(student, "1", rank=4)
    data = torch.utils.data.TensorDataset(X, y)
    result = recover(student, data, TrainConfig(epochs=2, batch_size=4, lr=0.01), teacher=teacher, device="cpu")
    assert result.epochs_run == 2 and all(not p.requires_grad for p in teacher.parameters())


def test_sensitivity_scan_picks_the_smallest_rank_within_tolerance():
    from deepshrink.factorize import sensitivity_scan

    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    q1, _ = torch.linalg.qr(torch.randn(7, 5, generator=torch.Generator().manual_seed(5)))
    q2, _ = torch.linalg.qr(torch.randn(6, 5, generator=torch.Generator().manual_seed(6)))
    model = nn.Sequential(nn.Linear(6, 7, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(q1 @ torch.diag(s) @ q2.T)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(7))
    ref = model(x).detach()

    def score(m: nn.Module) -> float:  # minus the relative output error
        with torch.no_grad():
            return -float((m(x) - ref).norm() / ref.norm())

    result = sensitivity_scan(model, "0", [1, 2, 3, 4, 5], score, tolerance=0.15)
    assert isinstance(model[0], nn.Linear)  # the scan does not change the model
    assert result.scores[5] == pytest.approx(0.0, abs=1e-5)
    assert all(result.scores[r] < result.scores[r + 1] for r in range(1, 5))
    assert result.chosen == min(r for r, v in result.scores.items() if v >= -0.15)
    assert 1 < result.chosen < 5
