"""The one-call Python API: ``deepshrink.compress(model, recipe, train_data=..., eval_data=...)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepshrink.core.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch and pydantic load on first use, so `import deepshrink` and `--help` stay fast
    from torch import nn
    from torch.utils.data import Dataset

    from deepshrink.recipe.runner import RunResult as Result
    from deepshrink.recipe.schema import Recipe

__all__ = ["Result", "compress"]


def __getattr__(name: str) -> Any:
    if name == "Result":
        from deepshrink.recipe.runner import RunResult

        return RunResult
    raise AttributeError(name)


def _recipe(recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any]) -> Recipe:
    from deepshrink.recipe.loader import load_recipe, parse_recipe
    from deepshrink.recipe.schema import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        import yaml

        return parse_recipe(yaml.safe_dump(dict(recipe), sort_keys=False), "<recipe dict>")[0]
    if isinstance(recipe, (str, os.PathLike)):
        text = str(recipe)
        if "\n" in text and "stages" in text:
            return parse_recipe(text)[0]
        return load_recipe(Path(recipe))
    raise ConfigError(f"recipe must be a Recipe, a YAML path or text, or a dict; got {type(recipe).__name__}")


def _splits(train_data: Any, eval_data: Any) -> Any:
    from torch.utils.data import TensorDataset

    from deepshrink.data import DataSplits
    from deepshrink.data import load as load_data
    from deepshrink.data.sentences import TextSplits, is_text_dataset, load_text

    if isinstance(train_data, (DataSplits, TextSplits, str, os.PathLike)) and eval_data is not None:
        raise ConfigError("eval_data goes with train_data given as a TensorDataset; a DataSplits or a dataset "
                          "name brings its own test split (or pass eval_fn to score the model your way)")
    if isinstance(train_data, (DataSplits, TextSplits)):
        return train_data
    if is_text_dataset(train_data):
        return load_text(train_data)
    if isinstance(train_data, (str, os.PathLike)):
        return load_data(train_data)
    if not isinstance(train_data, TensorDataset) or len(train_data.tensors) != 2:
        raise DataError("train_data must be a DataSplits, a dataset name/folder or a TensorDataset of "
                        "(inputs, labels)")
    test = eval_data if eval_data is not None else train_data
    if not isinstance(test, TensorDataset) or len(test.tensors) != 2:
        raise DataError("eval_data must be a TensorDataset of (inputs, labels)")
    x, y = train_data.tensors
    for what, ds in (("train_data", train_data), ("eval_data", test)):
        if len(ds) == 0:
            raise DataError(f"{what} is empty")
        if ds.tensors[1].is_floating_point() or ds.tensors[1].dim() != 1:
            raise DataError(f"{what}: labels must be a 1-D integer tensor of class indices, got "
                            f"{ds.tensors[1].dtype} of shape {tuple(ds.tensors[1].shape)}")
    num_classes = int(max(int(y.max()), int(test.tensors[1].max()))) + 1
    return DataSplits("user", train_data, test, num_classes, tuple(x.shape[1:]))


def compress(model: nn.Module | str, recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any], *,
             train_data: Any, eval_data: Dataset | None = None,
             eval_fn: Callable[[nn.Module], float] | None = None, out: str | os.PathLike[str] | None = None,
             pretrained: bool | None = None, quick: bool = False, progress: bool | None = None) -> Result:
    """Compress ``model`` with ``recipe`` and return a :class:`Result` (``.model``, ``.report``, ``.save``).

    ``model``: a trained ``nn.Module`` (leading finetune stages of the recipe are then skipped unless
    ``pretrained=False``) or a zoo name (trained by them). ``train_data``: a ``DataSplits``, a dataset
    name/folder, a ``TensorDataset`` of (inputs, labels) with ``eval_data`` likewise, or for a sentence
    encoder a text dataset (``"pydocs"`` or a ``deepshrink.data.sentences.TextSplits``); ``eval_fn(model)``
    (higher is better) replaces test accuracy in the report. ``out``: a folder for per-stage artifacts,
    state (resumable) and report.json/.md/.html; without it nothing is left on disk.
    """
    from torch import nn

    from deepshrink.recipe.runner import run_recipe

    if not isinstance(model, (nn.Module, str)):
        raise ConfigError(f"model must be an nn.Module or a zoo name, got {type(model).__name__}")
    rec = _recipe(recipe)
    return run_recipe(rec, model=model, data=_splits(train_data, eval_data), out=out, eval_fn=eval_fn,
                      pretrained=pretrained, quick=quick, progress=progress)
