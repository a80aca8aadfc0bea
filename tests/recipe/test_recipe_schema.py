"""Recipe schema: shipped recipes validate, dump/load round trips, bad recipes are one line with a line number."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.core.errors import ConfigError
from deepshrink.recipe import Recipe, RecipeError, dump_recipe, load_recipe, parse_recipe, stage_names
from deepshrink.recipe.loader import recipe_to_dict

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))

GOOD = """name: good
model: mlp
stages:
  - kind: finetune
    epochs: 1
  - kind: prune
    sparsity: 0.5
    overrides: {fc1: 0.7}
  - kind: cluster
    bits: 4
  - kind: encode
    coding: huffman
"""


def test_every_paper_has_a_shipped_recipe() -> None:
    names = {p.stem for p in RECIPES}
    for needed in ("deep_compression_lenet300", "deep_compression_lenet5", "deep_compression_lenet300_paper",
                   "deep_compression_lenet5_paper", "learning_both_weights_lenet300", "hinton_distillation_mlp",
                   "int8_ptq_lenet5", "qat4_lenet5"):
        assert needed in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_validates_and_round_trips(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.reference, "every shipped recipe names the result it claims"
    again = parse_recipe(dump_recipe(recipe))[0]
    assert again == recipe
    assert Recipe.model_validate(recipe.model_dump()) == recipe


def test_round_trip_keeps_values() -> None:
    recipe, _ = parse_recipe(GOOD)
    assert recipe.stages[1].overrides == {"fc1": 0.7}
    assert recipe.stages[2].bits == 4
    assert stage_names(recipe) == ["finetune", "prune", "cluster", "encode"]
    data = recipe_to_dict(recipe)
    assert [s["kind"] for s in data["stages"]] == ["finetune", "prune", "cluster", "encode"]
    assert "overrides" in data["stages"][1] and "importance" not in data["stages"][1]  # defaults left out


def test_recipe_is_frozen() -> None:
    recipe, _ = parse_recipe(GOOD)
    with pytest.raises(Exception):
        recipe.stages[1].sparsity = 0.9  # type: ignore[misc]


_prune = st.fixed_dictionaries({"kind": st.just("prune"), "sparsity": st.floats(0, 0.99),
                                "method": st.sampled_from(["magnitude", "unstructured"]),
                                "overrides": st.dictionaries(st.sampled_from(["fc1", "fc*", "re:fc[0-9]"]),
                                                             st.floats(0, 0.99), max_size=2)})
_cluster = st.fixed_dictionaries({"kind": st.just("cluster"), "bits": st.integers(1, 8),
                                  "init": st.sampled_from(["linear", "density", "random"])})
_quant = st.fixed_dictionaries({"kind": st.just("quantize"), "scheme": st.sampled_from(["int", "kmeans", "qat"]),
                                "bits": st.integers(2, 8), "calibration": st.integers(1, 4096)})
_finetune = st.fixed_dictionaries({"kind": st.just("finetune"), "epochs": st.integers(0, 50),
                                   "lr": st.floats(1e-6, 1.0), "optimizer": st.sampled_from(["sgd", "adam"])})
_encode = st.fixed_dictionaries({"kind": st.just("encode"), "index_bits": st.none() | st.integers(1, 16),
                                 "small_dtype": st.sampled_from(["float32", "float16"])})


@settings(max_examples=40, deadline=None)
@given(stages=st.lists(st.one_of(_prune, _cluster, _quant, _finetune, _encode), min_size=1, max_size=5),
       seed=st.integers(0, 2**31), name=st.text("abcxyz_-", min_size=1, max_size=12))
def test_round_trip_property(stages: list[dict], seed: int, name: str) -> None:
    named = [dict(s, name=f"s{i}") for i, s in enumerate(stages)]
    recipe = Recipe.model_validate({"name": name, "seed": seed, "stages": named})
    assert parse_recipe(dump_recipe(recipe))[0] == recipe


# (YAML, expected line, fragments the one-line message must contain)
BAD = [
    ("stages:\n  - kind: prune\n    sparsity: 1.5\n", 3, ["stage 0 (prune)", "sparsity", "1.5"]),
    ("stages:\n  - kind: prune\n    sparsity: -0.1\n", 3, ["stage 0 (prune)", "sparsity"]),
    ("stages:\n  - kind: cluster\n    bits: 9\n", 3, ["stage 0 (cluster)", "bits", "9"]),
    ("stages:\n  - kind: cluster\n    bits: 0\n", 3, ["stage 0 (cluster)", "bits"]),
    ("stages:\n  - kind: quantize\n    bits: 9\n", 3, ["stage 0 (quantize)", "bits"]),
    ("stages:\n  - kind: finetune\n  - kind: prune\n    sparsty: 0.5\n", 4, ["stage 1 (prune)", "sparsty", "unknown key"]),
    ("stages:\n  - kind: squash\n", 2, ["stage 0", "kind", "unknown stage kind 'squash'"]),
    ("stages:\n  - sparsity: 0.5\n", 2, ["stage 0", "missing 'kind'"]),
    ("stages:\n  - kind: prune\n    sparsity: lots\n", 3, ["stage 0 (prune)", "sparsity", "valid number"]),
    ("stages:\n  - kind: prune\n    sparsity: '0.5'\n", 3, ["sparsity", "valid number"]),
    ("stages:\n  - kind: finetune\n    epochs: 2.5\n", 3, ["stage 0 (finetune)", "epochs"]),
    ("stages:\n  - kind: finetune\n    epochs: -1\n", 3, ["stage 0 (finetune)", "epochs"]),
    ("stages:\n  - kind: finetune\n    lr: 0\n", 3, ["lr"]),
    ("stages:\n  - kind: finetune\n    optimizer: rmsprop\n", 3, ["optimizer", "rmsprop"]),
    ("stages:\n  - kind: prune\n    retrain:\n      epochs: 1\n      lr: -1\n", 5, ["stage 0 (prune)", "retrain.lr"]),
    ("stages:\n  - kind: prune\n    layers: ['re:(']\n", 3, ["layers", "not a valid regex"]),
    ("stages:\n  - kind: prune\n    layers: ['type:Nope']\n", 3, ["layers", "Nope"]),
    ("stages:\n  - kind: prune\n    importance: psychic\n", 3, ["importance", "psychic"]),
    ("stages:\n  - kind: prune\n    nm: [4, 2]\n", 3, ["nm", "N < M"]),
    ("stages:\n  - kind: quantize\n    scheme: int8_static\n    bits: 4\n", 4, ["stage 0 (quantize)", "bits"]),
    ("stages:\n  - kind: factorize\n", 2, ["stage 0 (factorize)", "exactly one of rank, energy or compression"]),
    ("stages:\n  - kind: factorize\n    method: depthwise_separable\n    rank: 3\n", 4,
     ["stage 0 (factorize)", "rank: not used by method depthwise_separable"]),
    ("stages:\n  - kind: factorize\n    method: grouped_pointwise\n", 2, ["groups: method grouped_pointwise needs it"]),
    ("stages:\n  - kind: factorize\n    method: hashed\n    compression: 0.5\n", 4, ["compression"]),
    ("stages:\n  - kind: factorize\n    method: svd\n    rank: 2\n    groups: 2\n", 5, ["groups: not used by method svd"]),
    ("stages:\n  - kind: distill\n", 2, ["stage 0 (distill)", "student"]),
    ("stages:\n  - kind: export\n    format: tflite\n", 3, ["stage 0 (export)", "format"]),
    ("stages:\n  - kind: encode\n    index_bits: 17\n", 3, ["stage 0 (encode)", "index_bits"]),
    ("stages: []\n", 1, ["stages"]),
    ("name: x\nstagez: []\n", 2, ["stagez", "unknown key"]),
    ("stages:\n  - kind: prune\n    name: a\n  - kind: cluster\n    name: a\n", 1, ["repeats the name 'a'"]),
    ("stages: [\n", 2, ["YAML syntax error"]),
    ("- just\n- a list\n", 1, ["a recipe is a mapping"]),
]


@pytest.mark.parametrize("text,line,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_recipe_is_one_line_naming_stage_key_and_line(text: str, line: int, fragments: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"r.yaml:{line}:"), msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="is a folder"):
        load_recipe(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(binary)
    assert issubclass(RecipeError, ConfigError)


def test_shipped_recipe_by_name() -> None:
    assert load_recipe("qat4_lenet5").name == "qat4_lenet5"
