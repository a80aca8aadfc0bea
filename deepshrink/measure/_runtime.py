"""Private helpers shared by the measurement modules: eval-mode guard, input calling, thread guard."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every submodule's own training flag afterwards.

    Restoring per module (not one ``model.train(flag)``) keeps deliberately frozen parts,
    e.g. an eval-mode BatchNorm inside a training model, exactly as they were.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tuple is positional args, a dict keyword args, anything else one positional argument (a named tuple
    such as a ``PackedSequence`` too: it is one input)."""
    if type(example_inputs) is tuple:
        return example_inputs, {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    return (example_inputs,), {}


def call(fn: Callable[..., Any], example_inputs: Any) -> Any:
    """Call ``fn`` with ``example_inputs`` spread as described in ``split_inputs``."""
    args, kwargs = split_inputs(example_inputs)
    return fn(*args, **kwargs)


def batch_size_of(example_inputs: Any) -> int | None:
    """First dimension of the first array-like input (tensor or numpy array), or None if there is none."""
    args, kwargs = split_inputs(example_inputs)
    for value in (*args, *kwargs.values()):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block (None keeps it) and restore it afterwards."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def first_line(exc: BaseException) -> str:
    """``Type: first line of message`` so wrapped errors stay one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
