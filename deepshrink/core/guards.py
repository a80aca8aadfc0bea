"""Numerical guards: find NaN / inf in weights, gradients and activations, naming the layer.

Used by the trainer (weights after each epoch, before a checkpoint is written) and by calibration
code (``ActivationGuard`` around forward passes). Every finding is a ``NumericalError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import DeepShrinkError


class NumericalError(DeepShrinkError):
    """A tensor that must be finite holds NaN or infinity."""


@dataclass(frozen=True)
class NonFinite:
    """One offending tensor: its name, how many NaN and infinite entries, and its size."""

    name: str
    nan: int
    inf: int
    numel: int

    def describe(self) -> str:
        return f"{self.name} has {self.nan} NaN and {self.inf} inf of {self.numel} values"


def nonfinite(name: str, t: torch.Tensor) -> NonFinite | None:
    """A NonFinite record for ``t`` or None when every entry is finite (non-float tensors always are)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None
    t = t.detach()
    if bool(torch.isfinite(t).all()):
        return None
    nan = int(torch.isnan(t).sum())
    return NonFinite(name, nan, int(t.numel() - int(torch.isfinite(t).sum()) - nan), int(t.numel()))


def scan(tensors: Iterable[tuple[str, torch.Tensor | None]] | Mapping[str, torch.Tensor | None],
         ) -> list[NonFinite]:
    """Every non-finite tensor among (name, tensor) pairs or a mapping, in order; None entries skipped."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    found = []
    for name, t in items:
        if t is not None:
            bad = nonfinite(name, t)
            if bad is not None:
                found.append(bad)
    return found


def _raise(found: list[NonFinite], what: str, where: str) -> None:
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        prefix = f"{where}: " if where else ""
        raise NumericalError(f"{prefix}non-finite {what}: {found[0].describe()}{more}")


def _named_state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers, including parametrized originals (e.g. masked or shared weights)."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def check_weights(model: nn.Module, where: str = "") -> None:
    """Raise NumericalError naming the first parameter or buffer holding NaN / inf."""
    _raise(scan(_named_state(model)), "weights", where)


def check_gradients(model: nn.Module, where: str = "") -> None:
    """Raise NumericalError naming the first parameter whose gradient holds NaN / inf."""
    _raise(scan((n, p.grad) for n, p in model.named_parameters()), "gradients", where)


def check_tensors(tensors: Mapping[str, torch.Tensor | None], what: str = "values", where: str = "") -> None:
    """Raise NumericalError naming the first non-finite tensor of a mapping (e.g. a state_dict)."""
    _raise(scan(tensors), what, where)


class ActivationGuard:
    """Context manager: forward hooks on every leaf module; the first module whose output (or input)
    holds NaN / inf raises NumericalError naming it. Use around calibration or evaluation passes::

        with ActivationGuard(model, where="calibration"):
            model(batch)
    """

    def __init__(self, model: nn.Module, where: str = "", check_inputs: bool = True) -> None:
        self.model = model
        self.where = where
        self.check_inputs = check_inputs
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.check_inputs:
                _raise(scan((f"input {i} of layer {name}", t) for i, t in enumerate(_flat(inputs))),
                       "activations", self.where)
            _raise(scan((f"output of layer {name} ({type(module).__name__})", t) for t in _flat(output)),
                   "activations", self.where)
        return hook

    def __enter__(self) -> ActivationGuard:
        for name, module in self.model.named_modules():
            if name and not any(True for _ in module.children()):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _flat(value: Any) -> list[torch.Tensor]:
    """Tensors inside a module's inputs / outputs (tensor, tuple, list or dict)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flat(v)]
    return []
