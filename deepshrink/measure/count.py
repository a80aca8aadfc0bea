"""Parameter, non-zero and size counts, aware of tied weights and pruning masks.

A module that keeps its weights as buffers in another form (integer codes of a quantized layer) names them in a
class attribute ``deepshrink_weight_buffers``; they count as its parameters, so quantizing never "removes"
parameters. Nor does weight sharing: a parametrized weight counts its effective elements."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ModelError


@dataclass(frozen=True)
class LayerStats:
    """Counts for one module that has a ``weight``; masked or parametrized weights count as effective.

    ``params``/``nonzeros``/``sparsity`` cover the module's own parameters (weight and bias);
    ``weight_sparsity`` covers the weight alone, which is what a pruning ratio refers to.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    sparsity: float
    weight_sparsity: float


def _check_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        inner = getattr(model, "model", None)  # Int8Model and similar wrappers
        if not isinstance(inner, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        model = inner
    runtime = getattr(model, "deepshrink_runtime", None)
    if runtime is not None:
        raise ModelError(f"cannot count the parameters of an {runtime} module ({type(model).__name__}): its "
                         "weights live outside PyTorch; count the model it was converted from")
    return model


def _is_torch_int8(module: nn.Module) -> bool:
    """torch's own quantized Linear/Conv (packed int8 weights behind ``weight()``/``bias()`` methods)."""
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")) \
        and callable(getattr(module, "weight", None)) and callable(getattr(module, "bias", None))


def _mask_for(module: nn.Module, param_name: str) -> torch.Tensor | None:
    """The pruning mask of ``param_name``: buffer ``<p>_mask``, or ``weight_mask`` for ``weight_orig``."""
    base = param_name[: -len("_orig")] if param_name.endswith("_orig") else param_name
    mask = module._buffers.get(f"{base}_mask")
    return mask if isinstance(mask, torch.Tensor) else None


def _effective_nonzeros(module: nn.Module, name: str, param: torch.Tensor) -> int:
    """Non-zeros of ``param`` after applying its mask (if any): what the pruned layer really uses."""
    nz = param.detach() != 0
    mask = _mask_for(module, name)
    if mask is not None:
        try:
            nz = nz & (mask.detach().to(param.device) != 0)
        except RuntimeError:
            raise ModelError(
                f"mask of {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(param.shape)}"
            ) from None
    return int(nz.sum().item())


@dataclass(frozen=True)
class _Entry:
    """One logical parameter of a module: its stored tensors and a way to count its effective non-zeros."""

    name: str
    stored: tuple[torch.Tensor, ...]
    nonzeros: Callable[[], int]
    logical: int = 0  # elements of the effective tensor when it has more than is stored (a shared codebook)
    # what makes it this parameter (default: its stored tensors): a codebook shared by several layers is one
    # stored tensor, but each layer's own assignment makes its weight a parameter of its own
    identity: tuple[torch.Tensor, ...] = ()

    @property
    def numel(self) -> int:
        return max(self.logical, sum(t.numel() for t in self.stored))


def _own_entries(module: nn.Module) -> Iterator[_Entry]:
    """The module's own parameters; a ``torch.nn.utils.parametrize`` weight counts as its effective value."""
    if parametrize.is_parametrized(module):
        for pname, plist in module.parametrizations.items():
            stored = tuple(plist.parameters(recurse=False))  # ``original`` (or original0, original1, ...)

            def effective(pname: str = pname) -> int:
                with torch.no_grad():
                    return int((getattr(module, pname) != 0).sum().item())

            # every weight of a k-means shared layer is still a parameter (its value is an index into the
            # codebook): count the effective tensor's elements, not the k stored centroids
            with torch.no_grad():
                logical = getattr(module, pname).numel()
            yield _Entry(pname, stored, effective, logical, stored + tuple(plist.buffers()))
    if _is_torch_int8(module):
        for name in ("weight", "bias"):
            t = getattr(module, name)()
            if isinstance(t, torch.Tensor):
                t = t.dequantize() if t.is_quantized else t.detach()
                yield _Entry(name, (t,), functools.partial(_buffer_nonzeros, t))
    for name, param in module.named_parameters(recurse=False):
        yield _Entry(name, (param,), functools.partial(_effective_nonzeros, module, name, param))
    for name in getattr(type(module), "deepshrink_weight_buffers", ()):
        buf = module._buffers.get(name)
        if isinstance(buf, torch.Tensor):
            yield _Entry(name, (buf,), functools.partial(_buffer_nonzeros, buf))


def _buffer_nonzeros(buf: torch.Tensor) -> int:
    return int((buf.detach() != 0).sum().item())


def _unique_entries(model: nn.Module) -> Iterator[_Entry]:
    """Each parameter once (first owner wins), so tied weights are not double counted: an entry whose
    identifying tensors were all seen is a tie; the stored tensors of a parametrization, once seen, are not
    counted again on their own (pre-order: a parametrized layer comes before its ``original``)."""
    seen: set[int] = set()
    alive: list[tuple[torch.Tensor, ...]] = []  # ids stay unique only while their tensors live (unpacked int8)
    for module in model.modules():
        for entry in _own_entries(module):
            ident = entry.identity or entry.stored
            seen_ids = [id(t) in seen for t in ident]
            if all(seen_ids) if entry.identity else any(seen_ids):  # a tie, or a parametrization's original
                continue
            seen.update(id(t) for t in (*ident, *entry.stored))
            alive.append((*ident, *entry.stored))
            yield entry


def count_params(model: nn.Module) -> int:
    """Number of unique parameter elements; a tensor shared by several modules counts once."""
    model = _check_module(model)
    return sum(entry.numel for entry in _unique_entries(model))


def count_nonzeros(model: nn.Module) -> int:
    """Non-zero elements of the effective parameters (prune masks and parametrizations applied)."""
    model = _check_module(model)
    return sum(entry.nonzeros() for entry in _unique_entries(model))


def fp32_bytes(model: nn.Module) -> int:
    """Size of the parameters stored as dense float32: the baseline for compression ratios."""
    return 4 * count_params(model)


def weight_codes(module: nn.Module) -> torch.Tensor | None:
    """The integer weight codes of a layer that stores its weight as codes (``deepshrink_weight_buffers``
    names ``codes``: int8 Linear and embedding layers), else None."""
    if "codes" not in getattr(type(module), "deepshrink_weight_buffers", ()):
        return None
    codes = module._buffers.get("codes")
    return codes if isinstance(codes, torch.Tensor) else None


def layer_stats(model: nn.Module) -> list[LayerStats]:
    """One ``LayerStats`` per module with a tensor ``weight`` or weight ``codes``, in ``named_modules`` order."""
    model = _check_module(model)
    stats: list[LayerStats] = []
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            weight = weight_codes(module)
            if weight is None:
                continue
        params = nonzeros = 0
        weight_params = weight_nonzeros = 0
        for entry in _own_entries(module):
            nz = entry.nonzeros()
            params += entry.numel
            nonzeros += nz
            if entry.name in ("weight", "weight_orig", "codes"):
                weight_params, weight_nonzeros = entry.numel, nz
        stats.append(
            LayerStats(
                name=mod_name,
                type=parametrize.type_before_parametrizations(module).__name__,
                shape=tuple(weight.shape),
                params=params,
                nonzeros=nonzeros,
                sparsity=1.0 - nonzeros / params if params else 0.0,
                weight_sparsity=1.0 - weight_nonzeros / weight_params if weight_params else 0.0,
            )
        )
    return stats
