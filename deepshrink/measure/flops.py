"""Multiply-accumulate counts from torch's own ``FlopCounterMode``.

``FlopCounterMode`` counts matmul-like ops (mm, addmm, bmm, convolution, attention) as
2 FLOPs per multiply-accumulate and ignores element-wise ops (ReLU, bias adds outside
addmm, pooling), so MACs = FLOPs // 2 is the usual "MACs" figure papers report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from deepshrink.core.errors import ModelError
from deepshrink.measure._runtime import call, eval_mode, first_line


def _int8_macs(module: torch.nn.Module, out: Any) -> int:
    """MACs of one call of a torch int8 Linear/Conv (its kernels are invisible to ``FlopCounterMode``)."""
    if not isinstance(out, torch.Tensor):
        return 0
    if isinstance(module, (torch.ao.nn.quantized.Linear, torch.ao.nn.quantized.dynamic.Linear)):
        return out.numel() * module.in_features
    kernel = math.prod(module.kernel_size)
    return out.numel() * (module.in_channels // module.groups) * kernel


_INT8_KERNELS = (torch.ao.nn.quantized.Linear, torch.ao.nn.quantized.dynamic.Linear,
                 torch.ao.nn.quantized.Conv1d, torch.ao.nn.quantized.Conv2d, torch.ao.nn.quantized.Conv3d)


def _rnn_layer_flop(input_shape: Any, w_ih_shape: Any, w_hh_shape: Any, *args: Any, **kwargs: Any) -> int:
    """One fused LSTM layer and direction on CPU (``mkldnn_rnn_layer``): both gate products at every step."""
    return 2 * math.prod(input_shape[:-1]) * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _trilinear_flop(i1_shape: Any, w_shape: Any, i2_shape: Any, expand1: Any, expand2: Any, expand3: Any,
                    *args: Any, **kwargs: Any) -> int:
    """``aten._trilinear`` (``nn.Bilinear``): one multiply-add per element of the broadcast product of the three
    operands (each with its size-1 dims inserted at ``expand*``), e.g. batch x out x in1 x in2."""
    def full(shape: Any, expand: Any) -> list[int]:
        dims = list(shape)
        for d in sorted(expand):
            dims.insert(d, 1)
        return dims

    shapes = [full(i1_shape, expand1), full(w_shape, expand2), full(i2_shape, expand3)]
    return 2 * math.prod(max(s[d] for s in shapes) for d in range(len(shapes[0])))


#: kernels torch's FlopCounterMode does not know: CPU flash attention (SDPA, BERT's attention) and fused LSTM
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
                   torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flop, torch.ops.aten._trilinear: _trilinear_flop}


def _run_counted(model: Callable[..., Any], example_inputs: Any) -> tuple[FlopCounterMode, dict[str, int]]:
    """Run one forward pass under the counter in eval mode and no_grad; wrap failures in ModelError. Also
    returns the MACs of torch's int8 Linear/Conv modules by name, counted from their output shapes."""
    if not callable(model):
        raise ModelError(f"expected a model or callable, got {type(model).__name__}")
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "model", None), torch.nn.Module):
        model = model.model  # Int8Model and similar wrappers
    runtime = getattr(model, "deepshrink_runtime", None) or getattr(getattr(model, "model", None),
                                                                    "deepshrink_runtime", None)
    if runtime is not None:
        raise ModelError(f"cannot count the MACs of an {runtime} module ({type(model).__name__}): its kernels run "
                         "outside PyTorch; count the model it was converted from")
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    int8: dict[str, int] = {}
    handles = []
    if isinstance(model, torch.nn.Module):
        for name, module in model.named_modules():
            if isinstance(module, _INT8_KERNELS):
                def hook(mod: torch.nn.Module, _: Any, out: Any, name: str = name) -> None:
                    int8[name] = int8.get(name, 0) + _int8_macs(mod, out)
                handles.append(module.register_forward_hook(hook))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel is invisible to the counter
    try:
        with eval_mode(model), torch.no_grad():
            try:
                with counter:
                    call(model, example_inputs)
            except Exception as exc:  # any failure of user code is a model problem
                raise ModelError(f"model cannot run on the example input: {first_line(exc)}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
    return counter, int8


def count_macs(model: Callable[..., Any], example_inputs: Any) -> int:
    """MACs of one forward pass on ``example_inputs`` (a tensor, a tuple of args or a dict of kwargs).
    torch's int8 Linear/Conv layers count from their shapes; ONNX Runtime and compiled modules are refused."""
    counter, int8 = _run_counted(model, example_inputs)
    return int(counter.get_total_flops()) // 2 + sum(int8.values())


def count_macs_by_module(model: torch.nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs per module name (as in ``named_modules``; the root is ``""``), nested modules included.

    A parent's figure includes its children; a module called twice accumulates both calls.
    Modules that do no counted ops are absent.
    """
    counter, int8 = _run_counted(model, example_inputs)
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
    for name, macs in int8.items():  # the layer and every parent of it
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            result[key] = result.get(key, 0) + macs
    return result
