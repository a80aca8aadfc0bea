"""Recipe input a user may get wrong, and runs that must not mix with another's: duplicate YAML keys, numbers in
exponent form, seeds and stage names that cannot work, the same folder for another model or data, --restart."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import deepshrink
from deepshrink.core.errors import ConfigError, DataError
from deepshrink.recipe.loader import RecipeError, parse_recipe


@pytest.mark.parametrize("text, fragment", [
    ("stages:\n  - kind: prune\n    sparsity: 0.5\n    sparsity: 0.9\n", "key 'sparsity' appears twice"),
    ("stages:\n  - kind: prune\nstages:\n  - kind: finetune\n", "key 'stages' appears twice"),
    ("seed: 99999999999999999999999\nstages:\n  - kind: finetune\n", "seed"),
    ("stages:\n  - kind: finetune\n    name: ../../escape\n", "name"),
    ("stages:\n  - kind: finetune\n    name: a/b\n", "name"),
    ("stages:\n  - kind: quantize\n    scheme: int\n    bits: 1\n", "at least 2 bits"),
])
def test_recipe_mistakes_are_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment) as err:
        parse_recipe(text, "r.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("r.yaml:")


def test_numbers_in_exponent_form_are_numbers() -> None:
    recipe, _ = parse_recipe("stages:\n  - kind: finetune\n    lr: 1e-3\n    weight_decay: 5E-4\n")
    assert recipe.stages[0].lr == pytest.approx(1e-3) and recipe.stages[0].weight_decay == pytest.approx(5e-4)


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _same_function(a: nn.Module, b: nn.Module) -> None:
    """Equal outputs in eval mode, and equal batch-norm statistics (what eval mode uses)."""
    a.eval(), b.eval()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a(x), b(x))
    assert torch.equal(a[1].running_mean, b[1].running_mean) and torch.equal(a[1].running_var, b[1].running_var)


PRUNE = {"name": "p", "stages": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5}]}


def test_another_model_or_data_in_the_same_folder_is_refused_not_resumed(tmp_path) -> None:
    deepshrink.compress(_net(0), PRUNE, train_data=_data(), out=tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="holds a run of another"):
        deepshrink.compress(_net(1), PRUNE, train_data=_data(), out=tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="holds a run of another"):
        deepshrink.compress(_net(0), PRUNE, train_data=_data(seed=5), out=tmp_path / "o", progress=False)
    again = deepshrink.compress(_net(0), PRUNE, train_data=_data(), out=tmp_path / "o", progress=False)
    assert again.report["stages"][0]["name"] == "prune"  # the same model and data: resumed


def test_eval_fn_sees_the_model_in_eval_mode_and_cannot_change_it(tmp_path) -> None:
    modes = []

    def score(model: nn.Module) -> float:
        modes.append(model.training)
        model(torch.randn(16, 8))  # in train mode this would update the batch-norm statistics
        return 0.5

    net = _net(0).train()
    res = deepshrink.compress(net, PRUNE, train_data=_data(), eval_fn=score, out=tmp_path / "o", progress=False)
    assert modes and not any(modes)
    _same_function(res.model, deepshrink.load(tmp_path / "o" / "00-prune.dsk", model=_net(0)))


def test_eval_data_with_named_or_split_data_is_refused_and_empty_data_is_a_data_error() -> None:
    with pytest.raises(ConfigError, match="eval_data goes with"):
        deepshrink.compress(_net(0), PRUNE, train_data="digits", eval_data=_data(), progress=False)
    with pytest.raises(DataError, match="empty"):
        deepshrink.compress(_net(0), PRUNE, train_data=TensorDataset(torch.zeros(0, 8), torch.zeros(0).long()),
                            progress=False)


def test_training_after_an_fp16_encode_stays_equal_to_its_artifact(tmp_path) -> None:
    recipe = {"name": "e", "stages": [
        {"kind": "prune", "method": "magnitude", "sparsity": 0.5},
        {"kind": "encode", "small_dtype": "float16"},
        {"kind": "finetune", "name": "tune", "epochs": 1, "batch_size": 16, "lr": 0.05, "optimizer": "sgd"}]}
    res = deepshrink.compress(_net(0), recipe, train_data=_data(), out=tmp_path / "o", progress=False)
    _same_function(res.model, deepshrink.load(tmp_path / "o" / "02-tune.dsk", model=_net(0)))


def test_restart_removes_the_previous_runs_export(tmp_path) -> None:
    out = tmp_path / "o"
    exported = dict(PRUNE, stages=[*PRUNE["stages"], {"kind": "export", "format": "safetensors"}])
    deepshrink.compress(_net(0), exported, train_data=_data(), out=out, progress=False)
    assert (out / "model.safetensors").exists()
    from deepshrink.recipe.runner import run_recipe
    from deepshrink.api import _recipe, _splits

    run_recipe(_recipe(PRUNE), model=_net(0), data=_splits(_data(), None), out=out, restart=True, progress=False)
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "state.json").read_text())["complete"] is True
