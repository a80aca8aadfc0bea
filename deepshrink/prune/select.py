"""Choosing layers: by glob pattern, ``re:`` regex or module type, with first/last exclusion and overrides."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Union

from torch import nn

from deepshrink.core.errors import ConfigError

Pattern = Union[str, type]
PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def matches(pattern: Pattern, name: str, module: nn.Module) -> bool:
    """``pattern`` is a module type, ``re:<regex>`` (full match) or a glob on the module's dotted name."""
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    if not isinstance(pattern, str):
        raise ConfigError(f"layer pattern must be a string or a module type, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as exc:
            raise ConfigError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    return fnmatch.fnmatchcase(name, pattern)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear / Conv layer with a weight, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n}


def select_layers(model: nn.Module, layers: Sequence[Pattern] | None = None, *,
                  exclude: Sequence[Pattern] = (), exclude_first: bool = False,
                  exclude_last: bool = False) -> dict[str, nn.Module]:
    """The prunable layers matching any of ``layers`` (all when None), minus ``exclude``.

    A pattern that matches no layer is a ConfigError naming it. ``exclude_first`` / ``exclude_last``
    drop the first and last prunable layer in definition order (usually the stem and the classifier).
    """
    candidates = prunable_layers(model)
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to prune")
    names = list(candidates)
    chosen = dict(candidates)
    if layers is not None:
        chosen = {}
        for pat in layers:
            hit = {n: m for n, m in candidates.items() if matches(pat, n, m)}
            if not hit:
                raise ConfigError(f"layer pattern {_show(pat)} matches no prunable layer "
                                  f"(layers: {', '.join(names)})")
            chosen.update(hit)
    for pat in exclude:
        hit = [n for n, m in candidates.items() if matches(pat, n, m)]
        if not hit:
            raise ConfigError(f"exclude pattern {_show(pat)} matches no prunable layer")
        for n in hit:
            chosen.pop(n, None)
    if exclude_first:
        chosen.pop(names[0], None)
    if exclude_last:
        chosen.pop(names[-1], None)
    if not chosen:
        raise ConfigError("no layer left to prune after exclusions")
    return {n: chosen[n] for n in names if n in chosen}


def resolve_overrides(selected: Mapping[str, nn.Module], overrides: Mapping[Pattern, float] | None,
                      default: float) -> dict[str, float]:
    """Per-layer values: ``default`` unless a pattern in ``overrides`` matches (later patterns win)."""
    out = {n: default for n in selected}
    for pat, value in (overrides or {}).items():
        hit = [n for n, m in selected.items() if matches(pat, n, m)]
        if not hit:
            raise ConfigError(f"override pattern {_show(pat)} matches no selected layer")
        for n in hit:
            out[n] = value
    return out


def _show(pat: Pattern) -> str:
    return pat.__name__ if isinstance(pat, type) else repr(pat)
