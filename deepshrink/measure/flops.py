"""Multiply-accumulate counts from torch's own ``FlopCounterMode``.

``FlopCounterMode`` counts matmul-like ops (mm, addmm, bmm, convolution, attention) as
2 FLOPs per multiply-accumulate and ignores element-wise ops (ReLU, bias adds outside
addmm, pooling), so MACs = FLOPs // 2 is the usual "MACs" figure papers report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepshrink.core.errors import ModelError
from deepshrink.measure._runtime import call, eval_mode, first_line


def _run_counted(model: Callable[..., Any], example_inputs: Any) -> FlopCounterMode:
    """Run one forward pass under the counter in eval mode and no_grad; wrap failures in ModelError."""
    if not callable(model):
        raise ModelError(f"expected a model or callable, got {type(model).__name__}")
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad():
        try:
            with counter:
                call(model, example_inputs)
        except Exception as exc:  # any failure of user code is a model problem
            raise ModelError(f"model cannot run on the example input: {first_line(exc)}") from None
    return counter


def count_macs(model: Callable[..., Any], example_inputs: Any) -> int:
    """MACs of one forward pass on ``example_inputs`` (a tensor, a tuple of args or a dict of kwargs)."""
    return int(_run_counted(model, example_inputs).get_total_flops()) // 2


def count_macs_by_module(model: torch.nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs per module name (as in ``named_modules``; the root is ``""``), nested modules included.

    A parent's figure includes its children; a module called twice accumulates both calls.
    Modules that do no counted ops are absent.
    """
    counter = _run_counted(model, example_inputs)
    root = type(model).__name__
    result: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1 :]
        else:
            name = key
        result[name] = int(sum(per_op.values())) // 2
    return result
