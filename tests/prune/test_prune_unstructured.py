"""Contract tests for unstructured pruning: every registered criterion x schedule, scopes, N:M, selection."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError
from deepshrink.models import create
from deepshrink.prune import (CRITERIA, SCHEDULES, get_mask, nm_mask, remove_masks, sensitivity_scan,
                              unstructured)
from deepshrink.prune.schedules import get_schedule
from deepshrink.prune.unstructured import std_threshold_mask
from deepshrink.train import TrainConfig


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create("mlp", in_features=64, hidden=(32, 24), num_classes=10)


CFG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-2)


def _layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("schedule", SCHEDULES.names())
@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_contract_target_reached_masks_honoured_and_permanent(criterion: str, schedule: str) -> None:
    model, data = _model(), _data()
    steps = {"agp": 2, "iterative": 2}.get(schedule, 1)
    takes = inspect.signature(CRITERIA.get(criterion)).parameters  # options are checked per criterion
    rep = unstructured(model, 0.75, importance=criterion, schedule=schedule, train=CFG, data=data,
                       schedule_kwargs={"steps": steps},
                       importance_kwargs={"max_batches": 1} if "max_batches" in takes else {})
    assert rep.steps[-1] == pytest.approx(0.75)
    for layer in _layers(model):
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    masks = [get_mask(layer).clone() for layer in _layers(model)]
    CFG_more = CFG.replace(epochs=1, lr=5e-2, seed=1)
    from deepshrink.train import Trainer

    Trainer(model, CFG_more, progress=False).fit(data)
    for layer, mask in zip(_layers(model), masks):
        assert torch.all(layer.weight[mask == 0] == 0)
        assert (layer.weight[mask == 1] != 0).any()
    remove_masks(model)
    for layer, mask in zip(_layers(model), masks):
        assert not parametrize.is_parametrized(layer)
        assert torch.all(layer.weight[mask == 0] == 0)
    assert rep.sparsity == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_global_scope_reaches_the_overall_target(criterion: str) -> None:
    model = _model()
    rep = unstructured(model, 0.8, importance=criterion, scope="global", calibration=_data(), permanent=True)
    total = sum(m.weight.numel() for m in _layers(model))
    zeros = sum(int((m.weight == 0).sum()) for m in _layers(model))
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    assert rep.sparsity == pytest.approx(0.8, abs=0.01)
    assert all(int((m.weight != 0).sum()) >= 1 for m in _layers(model))


def test_pruning_is_monotone_across_steps() -> None:
    model = _model()
    unstructured(model, 0.5, importance="random")
    first = [get_mask(m).clone() for m in _layers(model)]
    unstructured(model, 0.7, importance="l1")
    for m, before in zip(_layers(model), first):
        assert torch.all(get_mask(m)[before == 0] == 0)


def test_schedules_follow_their_formulas() -> None:
    agp = get_schedule("agp", steps=4).targets(0.9)
    assert agp == pytest.approx([0.9 * (1 - (1 - t / 4) ** 3) for t in range(1, 5)])
    it = get_schedule("iterative", steps=3).targets(0.875)
    assert it == pytest.approx([0.5, 0.75, 0.875])
    assert get_schedule("oneshot").targets(0.3) == [0.3]
    with pytest.raises(ConfigError, match="steps"):
        get_schedule("agp", steps=0)


def test_std_criterion_with_threshold_is_deep_compression_rule() -> None:
    model = _model()
    ref = [std_threshold_mask(m.weight, 1.0) for m in _layers(model)]
    unstructured(model, 0.5, importance="std", threshold=1.0)
    for m, r in zip(_layers(model), ref):
        assert torch.equal(get_mask(m), r)


def test_threshold_criterion_prunes_below_a_fraction_of_the_layer_max() -> None:
    model = _model()
    w = [m.weight.detach().clone() for m in _layers(model)]
    unstructured(model, 0.5, importance="threshold", threshold=0.3)
    for m, wt in zip(_layers(model), w):
        assert torch.equal(get_mask(m).bool(), wt.abs() >= 0.3 * wt.abs().max())


def test_nm_masks_keep_n_of_every_m_and_report_no_speedup() -> None:
    model = create("mlp", in_features=64, hidden=(32, 30), num_classes=10)
    rep = unstructured(model, 0.5, nm=(2, 4))
    w = model.layers["fc1"].weight
    assert torch.all((w.reshape(-1, 4) != 0).sum(1) == 2)
    assert "layers.fc3" in rep.skipped  # 30 inputs: not a multiple of 4
    assert any("no CPU speedup" in n for n in rep.notes)
    m = nm_mask(torch.arange(8.0).view(1, 8), 1, 4)
    assert m.tolist() == [[0, 0, 0, 1, 0, 0, 0, 1]]


def test_layer_selection_by_glob_regex_type_and_overrides() -> None:
    model = _model()
    rep = unstructured(model, 0.5, layers=["re:layers\\.fc[12]"], overrides={"*fc2": 0.9})
    assert [r.name for r in rep.rows] == ["layers.fc1", "layers.fc2"]
    assert rep.rows[1].sparsity == pytest.approx(0.9, abs=0.01)
    assert get_mask(model.layers["fc3"]) is None
    rep = unstructured(_model(), 0.5, layers=[nn.Linear], exclude_first=True, exclude_last=True)
    assert [r.name for r in rep.rows] == ["layers.fc2"]


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5])
def test_bad_ratio_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        unstructured(_model(), bad)


def test_pattern_matching_nothing_is_named() -> None:
    with pytest.raises(ConfigError, match="'conv9'"):
        unstructured(_model(), 0.5, layers=["conv9"])
    with pytest.raises(ConfigError, match="'nope'"):
        unstructured(_model(), 0.5, overrides={"nope": 0.2})


def test_data_driven_criteria_need_data() -> None:
    for name in ("taylor", "taylor_train", "activation", "apoz"):
        with pytest.raises(ConfigError, match=name):
            unstructured(_model(), 0.5, importance=name)


def test_sensitivity_scan_picks_per_layer_ratios() -> None:
    model, data = _model(), _data()

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(nn.functional.mse_loss(m(data.tensors[0]), model(data.tensors[0])))

    chosen = sensitivity_scan(model, score, sparsities=(0.2, 0.5, 0.9), tolerance=0.05)
    assert set(chosen) == {"layers.fc1", "layers.fc2", "layers.fc3"}
    rep = unstructured(model, 0.5, overrides={k: v for k, v in chosen.items() if v > 0} or None)
    assert rep.rows


@pytest.mark.parametrize("stat", ["std", "rms", "mean_abs"])
def test_activation_scores_match_hand_computed_statistic(stat: str) -> None:
    """score_ij = |w_ij| * statistic of input j, computed here by hand over two calibration batches."""
    from deepshrink.prune.importance import ActivationImportance

    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    model = nn.Sequential(layer)
    xs = [torch.randn(5, 4) + 1.0, torch.randn(5, 4) * 3]
    xs[0][:, 2] = 0.7  # a constant input: zero spread
    xs[1][:, 2] = 0.7
    batches = [(x, torch.zeros(5, dtype=torch.long)) for x in xs]
    crit = ActivationImportance(stat=stat)
    crit.prepare(model, {"0": layer}, batches)
    every = torch.cat(xs)  # equal batch sizes: the mean of batch means is the mean over all samples
    expected_stat = {"std": every.std(0, unbiased=False), "rms": every.pow(2).mean(0).sqrt(),
                     "mean_abs": every.abs().mean(0)}[stat]
    expected = layer.weight.detach().abs() * expected_stat.view(1, -1)
    assert torch.allclose(crit.scores("0", layer), expected, atol=1e-5)
    if stat == "std":
        assert torch.all(crit.scores("0", layer)[:, 2] < 1e-5)
    with pytest.raises(ConfigError, match="stat must be one of"):
        ActivationImportance(stat="max")


def test_taylor_scores_sum_micro_batch_gradients_of_the_given_loss() -> None:
    """score = sum over micro-batches of |w * dL/dw|, L the loss passed in; checked against autograd by hand."""
    import functools

    from deepshrink.prune.importance import TaylorImportance

    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    model = nn.Sequential(layer)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = functools.partial(nn.functional.cross_entropy, label_smoothing=0.2)
    crit = TaylorImportance(micro_batch=4, loss_fn=loss)
    crit.prepare(model, {"0": layer}, [(x, y)])
    expected = torch.zeros_like(layer.weight)
    for part in (slice(0, 4), slice(4, 8)):
        (g,) = torch.autograd.grad(loss(model(x[part]), y[part]), layer.weight)
        expected += (layer.weight.detach() * g).abs()
    assert torch.allclose(crit.scores("0", layer), expected, atol=1e-6)
    whole = TaylorImportance(micro_batch=None)
    whole.prepare(model, {"0": layer}, [(x, y)])
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), layer.weight)
    assert torch.allclose(whole.scores("0", layer), (layer.weight.detach() * g).abs(), atol=1e-6)
    with pytest.raises(ConfigError, match="micro_batch"):
        TaylorImportance(micro_batch=0)
