"""Training augmentation: random shifts against a per-pixel reference, flips, specs, and its use in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.data.augment import Augment, parse_augment, random_shift
from deepshrink.recipe.loader import RecipeError, parse_recipe
from deepshrink.train import TrainConfig, Trainer


def _reference_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i - dy, j - dx], zero where that falls outside: one pixel at a time."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = x[..., i - dy, j - dx]
    return out


@pytest.mark.parametrize("shape", [(5, 7, 6), (5, 3, 7, 6)])
def test_random_shift_moves_each_image_by_its_own_offsets(shape) -> None:
    x = torch.randn(shape)
    pixels = 2
    out = random_shift(x, pixels, torch.Generator().manual_seed(4))
    offsets = torch.randint(-pixels, pixels + 1, (2, shape[0]), generator=torch.Generator().manual_seed(4))
    assert offsets.abs().sum() > 0  # the draw moves something: the check below can fail
    for n in range(shape[0]):
        expected = _reference_shift(x[n], int(offsets[0, n]), int(offsets[1, n]))
        assert torch.equal(out[n], expected), n
    assert out.shape == x.shape and not torch.equal(out, x)


def test_shift_is_seeded_and_does_not_touch_its_input() -> None:
    x = torch.rand(16, 1, 10, 10)
    copy = x.clone()
    a = Augment(shift=3)(x, torch.Generator().manual_seed(1))
    b = Augment(shift=3)(x, torch.Generator().manual_seed(1))
    c = Augment(shift=3)(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(x, copy)


def test_hflip_mirrors_about_half_the_images_and_keeps_the_rest() -> None:
    x = torch.randn(400, 2, 4, 5)
    out = Augment(hflip=True)(x, torch.Generator().manual_seed(0))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    assert bool((same | mirrored).all()) and not bool((same & mirrored).any())
    assert 150 < int(mirrored.sum()) < 250


@pytest.mark.parametrize("spec, expected", [
    ("shift:2", Augment(shift=2)), ("hflip", Augment(hflip=True)), (" shift:4 , hflip", Augment(4, True)),
])
def test_specs_parse_and_print_back(spec: str, expected: Augment) -> None:
    parsed = parse_augment(spec)
    assert parsed == expected and parse_augment(parsed.spec) == parsed


@pytest.mark.parametrize("spec, fragment", [
    ("", "spec like"), ("rotate:3", "unknown augmentation 'rotate'"), ("shift:0", "pixel count"),
    ("shift:x", "pixel count"), ("shift", "pixel count"), ("shift:2,shift:3", "given once"),
    ("shift:65", "1..64"), ("hflip:1", "takes no value"), ("hflip,hflip", "appears once"),
    ("shift:\u00b2", "pixel count"), ("shift:\u0663", "pixel count"),  # non-ASCII digits: '²', Arabic-Indic 3
])
def test_bad_specs_are_one_line_config_errors(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        parse_augment(spec)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^train: augment"):
        TrainConfig(augment=spec)


def test_flat_inputs_are_refused_with_their_shape() -> None:
    with pytest.raises(DataError, match=r"image batches.*\(8, 784\)"):
        Augment(shift=1)(torch.zeros(8, 784), torch.Generator())
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    with pytest.raises(DataError, match=r"\(16, 4\)"):
        Trainer(nn.Linear(4, 2), TrainConfig(epochs=1, batch_size=16, augment="shift:1"), progress=False).fit(data)


@pytest.mark.parametrize("shape, fragment", [
    ((8, 1, 40), "at least 5 x 5"),  # a conv1d batch [N, C, L]: a vertical shift would wipe it
    ((8, 3, 4, 4), "at least 5 x 5"),
    ((2, 1, 1, 6, 6), "image batches"),
])
def test_batches_that_are_not_images_big_enough_are_refused(shape, fragment) -> None:
    with pytest.raises(DataError, match=fragment):
        Augment(shift=2)(torch.zeros(shape), torch.Generator())
    assert Augment(shift=2)(torch.zeros(0, 1, 6, 6), torch.Generator()).shape == (0, 1, 6, 6)


def test_fingerprints_of_settings_without_augmentation_are_those_of_before_it() -> None:
    """Checkpoints and cached baselines are keyed on ``identity()``: the field it added is left out at None."""
    assert "augment" not in TrainConfig().identity()
    assert TrainConfig(augment="shift:1").identity()["augment"] == "shift:1"


def test_a_cached_teacher_and_augmentation_are_refused_together() -> None:
    from deepshrink.distill import DistillConfig

    with pytest.raises(ConfigError, match="cache_teacher"):
        DistillConfig(cache_teacher=True, train=TrainConfig(augment="shift:1"))


def test_a_recipe_whose_augment_does_not_fit_the_data_fails_before_any_stage(tmp_path) -> None:
    import deepshrink
    from deepshrink.recipe.runner import StageError

    flat = TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    recipe = {"name": "a", "stages": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5},
                                      {"kind": "finetune", "epochs": 1, "augment": "shift:1"}]}
    with pytest.raises(StageError, match=r"stage 1 .*finetune.*image batches.*\(1, 8\)"):
        deepshrink.compress(nn.Sequential(nn.Linear(8, 2)), recipe, train_data=flat, out=tmp_path / "o",
                            progress=False)
    assert not list((tmp_path / "o").glob("*.dsk"))  # no stage ran


def _seen_batches(augment: str | None, seed: int = 0) -> list[torch.Tensor]:
    """The inputs the loss function receives over two epochs of training on fixed images."""
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(24, 1, 6, 6), torch.randint(0, 3, (24,)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    seen: list[torch.Tensor] = []

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return nn.functional.cross_entropy(net(x), y)

    cfg = TrainConfig(epochs=2, batch_size=8, seed=seed, augment=augment)
    Trainer(model, cfg, loss_fn=loss_fn, progress=False, device="cpu").fit(data)
    return seen


def test_training_sees_shifted_images_reproducibly() -> None:
    plain, shifted, again, other = (_seen_batches(None), _seen_batches("shift:2"), _seen_batches("shift:2"),
                                    _seen_batches("shift:2", seed=1))
    assert len(plain) == len(shifted) == 6
    assert all(torch.equal(a, b) for a, b in zip(shifted, again))
    assert not all(torch.equal(a, b) for a, b in zip(plain, shifted))
    assert not all(torch.equal(a, b) for a, b in zip(shifted, other))
    # the two epochs of one run draw different offsets (same shuffle seed per epoch would repeat them)
    assert not torch.equal(torch.cat(shifted[:3]).sort(0).values, torch.cat(shifted[3:]).sort(0).values)


def test_recipes_take_augment_in_training_settings_and_reject_a_bad_one() -> None:
    text = "stages:\n  - kind: finetune\n    epochs: 1\n    augment: shift:2\n"
    recipe, _ = parse_recipe(text, "r.yaml")
    assert recipe.stages[0].augment == "shift:2"
    with pytest.raises(RecipeError, match=r"^r\.yaml:.*augment.*unknown augmentation 'spin'") as err:
        parse_recipe(text.replace("shift:2", "spin:2"), "r.yaml")
    assert "\n" not in str(err.value)
    prune = "stages:\n  - kind: prune\n    retrain: {epochs: 1, augment: 'shift:3,hflip'}\n"
    assert parse_recipe(prune, "r.yaml")[0].stages[0].retrain.augment == "shift:3,hflip"
