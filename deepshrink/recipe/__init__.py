"""Recipes: YAML files of ordered compression stages, validated by a typed schema, run by ``run_recipe``."""

from deepshrink.recipe.loader import (
    RecipeError,
    dump_recipe,
    load_recipe,
    parse_recipe,
    read_recipe,
    recipe_to_dict,
    shipped_path,
)
from deepshrink.recipe.schema import STAGE_KINDS, Recipe, TrainSpec, stage_names



def run_recipe(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a recipe (see ``deepshrink.recipe.runner.run_recipe``; imported on first use: it loads torch)."""
    from deepshrink.recipe.runner import run_recipe as _run

    return _run(*args, **kwargs)


__all__ = ["run_recipe", "STAGE_KINDS", "Recipe", "RecipeError", "TrainSpec", "dump_recipe", "load_recipe", "parse_recipe",
           "read_recipe", "recipe_to_dict", "shipped_path", "stage_names"]
