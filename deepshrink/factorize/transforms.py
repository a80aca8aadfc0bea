"""Architecture transforms recorded in a model's arch record and replayed when an artifact is loaded.

A factorized model no longer matches its zoo architecture. Every substitution made by
``deepshrink.factorize`` therefore appends a plain-JSON entry (``{"op": ..., "layer": ...}``)
to ``arch_spec(model)["transforms"]``; ``replay_transforms`` rebuilds the same structure on a
freshly created zoo model (shapes only: the weights come from the artifact afterwards).
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DeepShrinkError, ModelError
from deepshrink.core.registry import Registry
from deepshrink.models.zoo import ARCH_ATTR, arch_record

# op name -> builder(model, entry) that performs the substitution structurally (no weight init).
Replay = Callable[[nn.Module, dict[str, Any]], None]
MAX_TRANSFORMS = 1024  # bounds the work an artifact's arch record can ask the loader to do
OPS: Registry[Replay] = Registry("factorize op", error=ModelError)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path), or a ConfigError naming it."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"layer name must be a non-empty string, got {name!r}")
    module = model
    for part in name.split("."):
        children = dict(module.named_children())
        if part not in children:
            raise ConfigError(f"layer {name!r} not found in {type(model).__name__}")
        module = children[part]
    return module


#: modules that read their children's ``.weight`` directly (fused attention paths), so a child cannot be replaced
_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` by ``new``; ConfigError when that would break the model: a parent that
    reads the layer's ``.weight`` itself, or a tied layer that calls this one."""
    old = get_module(model, name)
    parent_name, _, leaf = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    if isinstance(parent, _READS_CHILD_WEIGHTS):
        raise ConfigError(f"layer {name!r}: its parent {type(parent).__name__} reads its weight directly, so it "
                          "cannot be replaced")
    ties = [n for n, m in model.named_modules() if getattr(m, "_target", None) is old and n != name]
    if ties:
        raise ConfigError(f"layer {name!r} is the source of tied layer(s) {', '.join(ties)}: substitute it "
                          "before tying (apply tying last)")
    setattr(parent, leaf, new)


def record(model: nn.Module, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the model's arch record (a new dict, so copies never alias)."""
    spec = arch_record(model)  # a model of your own gets a user record: its artifact loads into one you build
    transforms = [*spec.get("transforms", []), dict(entry)]
    setattr(model, ARCH_ATTR, {**spec, "transforms": transforms})


def transforms_of(model: nn.Module) -> list[dict[str, Any]]:
    """The substitutions recorded on ``model`` so far (empty for an untouched zoo model)."""
    spec = getattr(model, ARCH_ATTR, None) or {}
    return [dict(t) for t in spec.get("transforms", [])]


def replay_transforms(model: nn.Module, transforms: Sequence[dict[str, Any]] | None) -> nn.Module:
    """Re-apply recorded substitutions to a fresh zoo model (structure only) and return it.

    Called by the artifact loader right after ``create``; malformed entries raise ModelError.
    """
    if not transforms:
        return model
    if not isinstance(transforms, (list, tuple)):
        raise ModelError("arch transforms must be a list")
    if len(transforms) > MAX_TRANSFORMS:
        raise ModelError(f"{len(transforms)} arch transforms is over the limit of {MAX_TRANSFORMS}")
    for entry in transforms:
        if not isinstance(entry, dict) or not isinstance(entry.get("op"), str):
            raise ModelError(f"malformed arch transform {entry!r}")
        try:
            OPS.get(entry["op"])(model, entry)
        except DeepShrinkError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ArithmeticError) as exc:
            raise ModelError(f"arch transform {entry!r} cannot be replayed: {exc}") from None
        record(model, entry)
    return model


def svd(mat: torch.Tensor, *, values_only: bool = False) -> Any:
    """``torch.linalg.svd`` (thin) or ``svdvals`` on one thread (thread count restored afterwards).

    Multi-threaded LAPACK SVD of these small matrices gains little and, on a busy machine, can
    be 5-10x slower than one thread because its worker threads spin against other processes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(mat) if values_only else torch.linalg.svd(mat, full_matrices=False)
    finally:
        torch.set_num_threads(threads)


def positive_int(entry: dict[str, Any], key: str) -> int:
    """``entry[key]`` as an int >= 1 (ModelError otherwise); for validating replayed records."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"arch transform {entry.get('op')!r}: {key} must be an integer >= 1, got {value!r}")
    return value


@contextlib.contextmanager
def rollback_on_error(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Put the layers ``names`` and the model's recorded substitutions back as they were if the block raises."""
    modules = {name: get_module(model, name) for name in names}
    arch = getattr(model, ARCH_ATTR, None)
    try:
        yield
    except BaseException:
        for name, module in reversed(list(modules.items())):
            parent_name, _, leaf = name.rpartition(".")
            setattr(get_module(model, parent_name) if parent_name else model, leaf, module)
        if arch is None:
            if ARCH_ATTR in vars(model):
                delattr(model, ARCH_ATTR)
        else:
            setattr(model, ARCH_ATTR, arch)
        raise
