"""taylor_train: first-order Taylor accumulated over the retraining steps, checked against autograd by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError
from deepshrink.prune import get_mask, unstructured
from deepshrink.prune.importance import TaylorImportance, TrainingTaylorImportance
from deepshrink.prune.masks import set_mask
from deepshrink.train import TrainConfig


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 5, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]


@pytest.mark.parametrize("stat", ["mean", "abs", "sq"])
def test_scores_are_the_statistic_of_w_times_g_over_the_observed_steps(stat: str) -> None:
    """Three SGD steps inside observe(); the expected score is computed from w_t and dL/dw_t step by step."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    set_mask(layer, (torch.rand(3, 5) > 0.3).float())  # under a mask: W x dL/dW with W the masked weight
    model = nn.Sequential(layer)
    mask = get_mask(layer)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()  # plain SGD replayed by hand
    loss = nn.functional.cross_entropy
    crit = TrainingTaylorImportance(stat=stat)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    per_step = []
    with crit.observe(model, {"0": layer}):
        for x, y in _batches():
            opt.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            opt.step()
            w.requires_grad_(True)
            b.requires_grad_(True)
            gw, gb = torch.autograd.grad(loss(x @ w.T + b, y), (w, b))
            per_step.append(w.detach() * gw)
            w, b = (w.detach() - 0.5 * gw * mask), (b.detach() - 0.5 * gb)
    stacked = torch.stack(per_step)
    expected = {"mean": stacked.mean(0).abs(), "abs": stacked.abs().mean(0), "sq": stacked.square().mean(0)}[stat]
    crit.prepare(model, {"0": layer}, None)  # scores from the observed steps: no calibration data needed
    got = crit.scores("0", layer)
    assert torch.allclose(got, expected, atol=1e-7)
    assert torch.all(got[get_mask(layer) == 0] == 0)
    assert got.abs().sum() > 0


def test_nothing_observed_falls_back_to_calibration_taylor_and_hooks_are_removed() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 3)
    model = nn.Sequential(layer)
    batches = _batches(1)
    crit, plain = TrainingTaylorImportance(micro_batch=2), TaylorImportance(micro_batch=2)
    with crit.observe(model, {"0": layer}):
        pass
    model.zero_grad()
    nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).backward()  # outside observe: not recorded
    assert crit.counts == {}
    crit.prepare(model, {"0": layer}, batches)
    plain.prepare(model, {"0": layer}, batches)
    assert torch.allclose(crit.scores("0", layer), plain.scores("0", layer))
    with pytest.raises(ConfigError, match="calibration data"):
        TrainingTaylorImportance().prepare(model, {"0": layer}, None)
    with pytest.raises(ConfigError, match="stat must be one of"):
        TrainingTaylorImportance(stat="median")


def test_engine_feeds_every_retraining_step_and_prepare_consumes_them() -> None:
    """Iterative pruning: each round's retraining is observed (epochs x batches steps per layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 4, 4, generator=g), torch.randint(0, 4, (40,), generator=g))
    crit = TrainingTaylorImportance()
    seen: list[dict[str, int]] = []
    original = crit.prepare

    def spy(m: nn.Module, layers, batches) -> None:
        seen.append(dict(crit.counts))
        original(m, layers, batches)

    crit.prepare = spy  # type: ignore[method-assign]
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05)
    rep = unstructured(model, 0.75, importance=crit, schedule="iterative", schedule_kwargs={"steps": 3},
                       train=cfg, data=data)
    per_round = cfg.epochs * math.ceil(40 / 16)
    assert seen == [{}, {"1": per_round, "3": per_round}, {"1": per_round, "3": per_round}]
    assert crit.counts == {"1": per_round, "3": per_round}  # the final retraining, observed but unused
    assert rep.sparsity == pytest.approx(0.75, abs=0.01)


def test_under_a_process_group_the_sums_are_all_reduced(tmp_path) -> None:
    """One-rank gloo group: the all-reduce path runs and leaves the mean unchanged (two ranks sum identically)."""
    import torch.distributed as dist

    torch.manual_seed(2)
    layer = nn.Linear(5, 3)
    model = nn.Sequential(layer)
    crit = TrainingTaylorImportance(stat="abs")
    expected = torch.zeros_like(layer.weight)
    with crit.observe(model, {"0": layer}):
        for x, y in _batches(2)[:2]:  # no optimizer step: w stays, the score is the mean of |w g| by hand
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), layer.weight)
            expected += (layer.weight.detach() * g).abs() / 2
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        crit.prepare(model, {"0": layer}, None)
    finally:
        dist.destroy_process_group()
    assert torch.allclose(crit.scores("0", layer), expected)
    assert crit.counts == {} and crit.sums == {}  # consumed: the next step starts afresh
