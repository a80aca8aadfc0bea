"""Models for a run: a zoo name or a user's ``package.module:factory``, trained weights, stage artifacts.

Zoo models save as ordinary artifacts (``deepshrink.load`` rebuilds them). A user's model has no zoo
record, so its artifacts carry ``{"zoo": "import:package.module:factory"}``: they load only into a model
built by the factory the user named on the command line (``deepshrink.load(path, model=factory())``),
never by importing code named in a file.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.artifact import StoragePolicy, load, save
from deepshrink.artifact import tensors as T
from deepshrink.artifact.model_io import SaveReport
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError, DeepShrinkError, ModelError
from deepshrink.models.zoo import ARCH_ATTR, IMPORT_PREFIX, MODELS, PRETRAINED, create, user_model_name


def is_import_path(spec: str) -> bool:
    return ":" in spec and not spec.startswith(IMPORT_PREFIX)


def model_factory(spec: str, args: dict[str, Any] | None = None) -> Callable[[], nn.Module]:
    """A function building a fresh model: zoo ``name`` or ``package.module:factory`` (called with ``args``)."""
    args = dict(args or {})
    if not isinstance(spec, str) or not spec:
        raise ModelError("no model given: pass --model NAME or package.module:factory, or set model: in the recipe")
    if not is_import_path(spec):
        if spec in PRETRAINED:
            return lambda: _pretrained(spec, args)
        if spec not in MODELS:
            raise ModelError(f"unknown model {spec!r}; choose a zoo model ({', '.join(MODELS.names())}), a "
                             f"pretrained one ({', '.join(PRETRAINED.names())}) or give package.module:factory")
        return lambda: create(spec, **args)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model import path {spec!r} must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model {spec!r}: {module_name} has no callable {attr!r}")

    def build() -> nn.Module:
        try:
            model = factory(**args)
        except Exception as exc:  # the user's code: any failure is one line naming it
            raise ModelError(f"model {spec!r}: the factory failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
        if getattr(model, ARCH_ATTR, None) is None:
            # the factory's arguments are recorded (data, never code): `deepshrink export --model` rebuilds with them
            setattr(model, ARCH_ATTR, {"zoo": f"{IMPORT_PREFIX}{spec}", "kwargs": dict(args)})
        return model

    return build


def check_runs(model: nn.Module, spec: str, data: str, example: torch.Tensor) -> None:
    """One line, before any training or file, when the model cannot take the dataset's inputs."""
    from deepshrink.measure._runtime import first_line

    arch = getattr(model, ARCH_ATTR, None)
    if isinstance(arch, dict) and arch.get("zoo") == "hf_bert":
        raise ModelError(f"model {spec!r} is a sentence encoder: use a text dataset (--data pydocs) with a recipe "
                         "(e.g. deepshrink run minilm_int8)")
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    except DeepShrinkError:
        raise
    except Exception as exc:  # the user's model and data do not fit together
        raise ModelError(f"model {spec!r} cannot run on {data!r} inputs of shape {tuple(example.shape)}: "
                         f"{first_line(exc)}") from None
    finally:
        model.train(was)


def _pretrained(name: str, args: dict[str, Any]) -> nn.Module:
    try:
        return PRETRAINED.get(name)(**args)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: bad arguments {sorted(args)}: {exc}") from None


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load trained weights into ``model``: a safetensors file or a deepshrink artifact (never a pickle)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist")
    if p.suffix == ".dsk":
        state = read_artifact_state(p)
    elif p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read weights {p}: {exc}") from None
    else:
        raise ModelError(f"weights {p}: expected a .safetensors file or a .dsk artifact")
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"weights {p} do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ModelError(f"weights {p}: {name} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)


def read_artifact_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Decode every tensor of an artifact into a plain state dict (no architecture is built)."""
    box = container.read_container(path)
    tensors = box.meta.get("tensors") if isinstance(box.meta, dict) else None
    if not isinstance(tensors, dict):
        raise ArtifactError(f"{path}: not a deepshrink model artifact")
    out = {}
    for name, meta in tensors.items():
        shape = tuple(meta.get("shape", ())) if isinstance(meta, dict) else ()
        out[name] = T.decode_tensor(meta, shape, box.blobs, f"{path}: {name}")
    return out


def has_quantizers(model: nn.Module) -> bool:
    """True when some weight carries a quantizer (frozen codes, fake-quant or LSQ) or an input quantizer."""
    from deepshrink.quantize.modules import QuantizedWeight, input_quantizers
    from deepshrink.quantize.qat import FakeQuantWeight, LSQWeight

    kinds = (QuantizedWeight, FakeQuantWeight, LSQWeight)
    return bool(input_quantizers(model)) or any(isinstance(m, kinds) for m in model.modules())


def save_model(model: nn.Module, path: str | os.PathLike[str], policy: StoragePolicy | None = None,
               info: dict[str, Any] | None = None) -> SaveReport:
    """Write ``model`` atomically: quantized weights as packed integer codes (activation quantizers are
    run-time only and not stored), everything else through the sparse/codebook/Huffman codec."""
    if not has_quantizers(model):
        return save(model, path, policy, info)
    from deepshrink.artifact.quantized import save_quantized

    from deepshrink.quantize.modules import without_input_quantizers

    return save_quantized(without_input_quantizers(model), path, policy, info)


def load_model(path: str | os.PathLike[str], factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Reload a stage artifact: ``deepshrink.load`` for zoo models, else into ``factory()`` (a user's model)."""
    user = user_model_name(_arch(path))
    if user is None:
        return load(path)
    if factory is None:
        raise ArtifactError(f"{path} holds a user model ({user[:120]}); rebuild it with its factory: "
                            "deepshrink.load(path, model=factory())")
    return load(path, model=factory())


def _arch(path: str | os.PathLike[str]) -> dict[str, Any]:
    box = container.read_container(path)
    arch = box.meta.get("arch") if isinstance(box.meta, dict) else None
    if not isinstance(arch, dict):
        raise ArtifactError(f"{path}: not a deepshrink model artifact")
    return arch
