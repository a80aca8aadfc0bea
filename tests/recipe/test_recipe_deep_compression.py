"""The shipped Deep Compression recipes reproduce deepshrink.pipelines (the demo) number for number."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepshrink.artifact.inspect import describe
from deepshrink.demo import run_demo
from deepshrink.recipe import load_recipe
from deepshrink.recipe.runner import run_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.slow
@pytest.mark.parametrize("recipe_file,pipeline_recipe", [("deep_compression_lenet300", "default"),
                                                          ("deep_compression_lenet300_paper", "paper")])
def test_recipe_matches_the_pipeline(tmp_path: Path, recipe_file: str, pipeline_recipe: str) -> None:
    demo = run_demo(tmp_path / "demo", quick=True, models=("lenet300",), recipe_name=pipeline_recipe,
                    reuse=False, progress=False)["models"]["lenet300"]
    rep = run_recipe(load_recipe(RECIPES / f"{recipe_file}.yaml"), quick=True, out=tmp_path / "run").report
    assert rep["baseline"]["accuracy"] == demo["baseline"]["accuracy"]
    ours = {s["kind"]: s for s in rep["stages"]}
    theirs = {s["name"]: s for s in demo["stages"]}
    assert ours["prune"]["nonzeros"] == theirs["pruned"]["nonzeros"]
    assert ours["prune"]["accuracy"] == theirs["pruned"]["accuracy"]
    assert ours["encode"]["accuracy"] == theirs["huffman"]["accuracy"]
    # every tensor stream is byte-identical; the files differ only by the stage names in their metadata
    a, b = describe(ours["encode"]["artifact"]), describe(theirs["huffman"]["artifact"])
    assert [(t["name"], t["bytes"]) for t in a["layers"]] == [(t["name"], t["bytes"]) for t in b["layers"]]
    assert a["file_bytes"] - a["meta_bytes"] == b["file_bytes"] - b["meta_bytes"]
    assert abs(ours["encode"]["artifact_bytes"] - theirs["huffman"]["artifact_bytes"]) <= 64
    assert rep["compression_ratio"] == pytest.approx(demo["compression_ratio"], rel=0.01)
