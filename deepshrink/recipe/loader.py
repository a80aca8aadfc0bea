"""Reading and writing recipe YAML; every problem is one line naming the file, line, stage and key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deepshrink.core.errors import ConfigError
from deepshrink.recipe.schema import STAGE_KINDS, Recipe

MAX_RECIPE_BYTES = 1 << 20


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where YAML 1.1 surprises: a key given twice in one mapping is an error
    (not the last one silently winning), and ``1e-3`` / ``5E-4`` are numbers, as in YAML 1.2 and JSON."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# a copy of the resolver table (add_implicit_resolver would append to the lists SafeLoader shares)
_RecipeLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


class RecipeError(ConfigError):
    """A recipe is missing, unparsable or invalid; the message is ``FILE:LINE: stage I (KIND): KEY: why``."""


class LineMap:
    """Line numbers (1-based) of every key path in a YAML document, from the composed node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: tuple[Any, ...]) -> int | None:
        """The line of the longest prefix of ``path`` present in the document."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _error_line(err: dict[str, Any], data: Any, lines: LineMap, source: str) -> str:
    """One line for the first pydantic error: file:line, the stage (index and kind), the key, the reason."""
    loc = list(err["loc"])
    path: list[Any] = []
    stage = ""
    i = 0
    while i < len(loc):
        part = loc[i]
        path.append(part)
        if len(path) == 2 and path[0] == "stages" and isinstance(part, int):
            item = data["stages"][part] if isinstance(data, dict) and isinstance(data.get("stages"), list) \
                and part < len(data["stages"]) else None
            kind = item.get("kind") if isinstance(item, dict) else None
            stage = f"stage {part} ({kind})" if kind in STAGE_KINDS else f"stage {part}"
            if i + 1 < len(loc) and loc[i + 1] == kind:  # the discriminated union's tag in the location
                i += 1
        i += 1
    keys = [str(p) for p in path[2:]] if stage else [str(p) for p in path]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown stage kind {err.get('input', {}).get('kind')!r}; choose one of: {', '.join(STAGE_KINDS)}"
        keys = ["kind"]
    elif err["type"] == "union_tag_not_found":
        msg = f"missing 'kind' (one of: {', '.join(STAGE_KINDS)})"
        keys = ["kind"]
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if ": " in msg and not keys:  # model-level checks name their key first ("bits: ...")
            key, msg = msg.split(": ", 1)
            keys = [key]
            path = [*path, key]
    if "input" in err and err["type"] not in ("extra_forbidden", "missing") and not err["type"].startswith("union"):
        shown = repr(err["input"])
        if len(shown) <= 60 and "got" not in msg and not isinstance(err["input"], (dict, list)):
            msg = f"{msg}, got {shown}"
    line = lines.line(tuple(path))
    parts = [p for p in (stage, ".".join(keys)) if p]
    return f"{_where(source, line)}: {': '.join(parts)}: {msg}" if parts else f"{_where(source, line)}: {msg}"


def parse_recipe(text: str, source: str = "<recipe>") -> tuple[Recipe, LineMap]:
    """Validate recipe YAML text; returns the recipe and the line of every key (for runtime errors)."""
    try:
        root = yaml.compose(text, Loader=_RecipeLoader)
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RecipeError(f"{_where(source, line)}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: YAML error: {exc}") from None
    lines = LineMap(root)
    if not isinstance(data, dict):
        raise RecipeError(f"{_where(source, 1)}: a recipe is a mapping with a 'stages' list, "
                          f"got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains the rest
        raise RecipeError(_error_line(errors[0], data, lines, source)) from None
    return recipe, lines


def read_recipe(path: str | os.PathLike[str]) -> tuple[Recipe, LineMap]:
    """Read and validate a recipe file (or a shipped recipe by name, see ``shipped``)."""
    p = Path(path)
    if not p.exists() and not any(sep in str(path) for sep in ("/", os.sep)) and shipped_path(str(path)):
        p = shipped_path(str(path))  # type: ignore[assignment]
    try:
        if p.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{p}: recipe is over {MAX_RECIPE_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {p} does not exist") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe {p} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {p} is not UTF-8 text") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {p}: {exc.strerror or exc}") from None
    return parse_recipe(text, str(p))


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file."""
    return read_recipe(path)[0]


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain data without default values (``kind`` always kept first), which validates back to ``recipe``."""
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    stages = []
    for stage, dumped in zip(recipe.stages, data.get("stages", [])):
        stages.append({"kind": stage.kind, **{k: v for k, v in dumped.items() if k != "kind"}})
    data["stages"] = stages
    return data


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of ``recipe``; ``parse_recipe(dump_recipe(r))[0] == r``."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=None, width=100)


def recipes_dir() -> Path | None:
    """The ``recipes/`` folder of a source checkout, if present."""
    folder = Path(__file__).resolve().parents[2] / "recipes"
    return folder if folder.is_dir() else None


def shipped_path(name: str) -> Path | None:
    """``recipes/<name>.yaml`` of the checkout, when ``name`` is a shipped recipe."""
    folder = recipes_dir()
    if folder is None:
        return None
    p = folder / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return p if p.is_file() else None
