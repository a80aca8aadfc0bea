"""Save and load whole models as pickle-free artifacts.

The architecture is rebuilt from a JSON recipe (never unpickled), every tensor is decoded
from its blobs, and the result is a plain ``nn.Module`` whose outputs equal the saved model's.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.artifact import tensors as T
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError, ConfigError, CorruptArtifactError, DeepShrinkError, ModelError
from deepshrink.models.zoo import ARCH_ATTR, MODELS, arch_record, create, user_model_name
from deepshrink.quantize.kmeans import shared_codebook

FORMAT = "deepshrink.model"


@dataclass(frozen=True)
class StoragePolicy:
    """How tensors are written.

    coding: ``packed`` (fixed width), ``huffman`` or ``auto`` (smaller of the two, per stream).
    index_bits: relative-index width for every sparse tensor; None picks per tensor the width whose packed
    index stream is smallest (also when the stream is then Huffman-coded);
    ``layer_index_bits`` overrides it per tensor name. ``sparse`` stores a tensor sparse when
    that is smaller. ``value_dtype`` stores weights that are not shared; ``small_dtype`` stores
    1-D float tensors (biases, norms): float16 halves them but rounds (the Deep Compression
    pipeline rounds them in memory first, so the loaded model still matches exactly).
    """

    coding: T.Coding = "auto"
    index_bits: int | None = None
    layer_index_bits: dict[str, int] = field(default_factory=dict)
    sparse: bool = True
    value_dtype: str = "float32"
    small_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.coding not in ("packed", "huffman", "auto"):
            raise ConfigError(f"storage coding must be packed, huffman or auto, got {self.coding!r}")
        for name, bits in [("*", self.index_bits), *self.layer_index_bits.items()]:
            if bits is not None and not 1 <= bits <= 16:
                raise ConfigError(f"index bits for {name} must be in 1..16, got {bits}")
        for dtype in (self.value_dtype, self.small_dtype):
            if dtype not in ("float32", "float16"):
                raise ConfigError(f"storage dtype must be float32 or float16, got {dtype!r}")


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    encoding: str
    nbytes: int
    index_bits: int | None = None
    weight_bits: int | None = None
    streams: dict[str, T.StreamStats] = field(default_factory=dict)


@dataclass
class SaveReport:
    path: str
    nbytes: int
    meta_bytes: int
    tensors: list[TensorReport]


def _own_parametrization(plist: nn.Module) -> bool:
    """Whether a parametrization list holds only deepshrink's (masks, shared codebooks, weight quantizers), whose
    tensor is stored under its plain name; torch's (weight_norm, spectral_norm, ...) keep their own tensors."""
    return all(type(p).__module__.startswith("deepshrink.") for p in plist)


def plain_state(model: nn.Module) -> dict[str, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]]:
    """Each persistent tensor under its state-dict name as a fresh model names it (a deepshrink-parametrized
    weight under its plain name), with its codebook if shared. A module used at two places is stored under
    both names, as ``state_dict`` lists it. ModelError for what an artifact cannot hold: uninitialized (lazy)
    parameters and ``get_extra_state``."""
    out: dict[str, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if ".parametrizations" in f".{mod_name}" or mod_name.endswith("parametrizations"):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if type(module).get_extra_state is not nn.Module.get_extra_state:
            raise ModelError(f"cannot save {prefix or 'the model '}({type(module).__name__}): it defines "
                             "get_extra_state, arbitrary Python state that a pickle-free artifact does not hold")
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                if _own_parametrization(plist):
                    out[prefix + pname] = (getattr(module, pname).detach(), shared_codebook(module, pname))
                else:  # torch's own: its original tensors (and buffers), as the state dict has them
                    for key, t in plist.state_dict(prefix=f"{prefix}parametrizations.{pname}.").items():
                        out[key] = (t.detach(), None)
        for pname, p in module._parameters.items():
            if isinstance(p, nn.parameter.UninitializedTensorMixin):
                raise ModelError(f"cannot save: {prefix}{pname} ({type(module).__name__}) is an uninitialized lazy "
                                 "parameter; run one forward pass first so it gets its shape")
            if p is not None:
                out[prefix + pname] = (p.detach(), None)
        for bname, b in module._buffers.items():
            if isinstance(b, nn.parameter.UninitializedTensorMixin):
                raise ModelError(f"cannot save: {prefix}{bname} ({type(module).__name__}) is an uninitialized lazy "
                                 "buffer; run one forward pass first so it gets its shape")
            if b is not None and bname not in module._non_persistent_buffers_set:
                out[prefix + bname] = (b.detach(), None)
    return out


def round_small_tensors(model: nn.Module) -> None:
    """Round every float tensor an artifact stores with ``small_dtype`` (1-D and 0-D: biases, norms, batch-norm
    statistics, codebooks) to float16 values in place, so the model in memory is the one an fp16 artifact
    reloads bit for bit."""
    with torch.no_grad():
        for t, _ in plain_state(model).values():
            if t.is_floating_point() and t.dim() <= 1:
                t.copy_(t.half().to(t.dtype))
        for p in model.parameters():  # also parametrization originals (a codebook is stored as its own tensor)
            if p.is_floating_point() and p.dim() <= 1:
                p.copy_(p.half().to(p.dtype))


#: float dtypes stored exactly in float32 (or float64) blobs and restored on load (``tdtype`` in the metadata)
RESTORED_FLOATS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _encode(name: str, t: torch.Tensor, shared: tuple[torch.Tensor, torch.Tensor] | None, key: str,
            policy: StoragePolicy) -> tuple[T.Encoded, TensorReport]:
    bits = policy.layer_index_bits.get(name, policy.index_bits)
    nnz = int((t != 0).sum())
    weight_bits = None
    if shared is not None:
        codebook, assign = shared
        options = [T.encode_codebook_dense(codebook, assign, key, policy.coding)]
        if policy.sparse:
            options.append(T.encode_sparse(t, key, index_bits=bits, coding=policy.coding,
                                           codebook=codebook, assign=assign))
        weight_bits = T.bits_for(codebook.numel())
        nnz = int((assign != codebook.numel()).sum())
    elif t.is_floating_point():
        dtype = policy.small_dtype if t.dim() <= 1 else policy.value_dtype
        if t.dtype == torch.float64 and dtype == "float32":  # exact storage of a float64 tensor is float64
            dtype = "float64"
        options = [T.encode_dense(t, dtype, key)]
        if policy.sparse and t.dim() > 1 and nnz < t.numel():
            options.append(T.encode_sparse(t, key, index_bits=bits, coding=policy.coding, value_dtype=dtype))
    elif t.is_complex():
        raise ConfigError(f"cannot save tensor {name}: dtype {t.dtype} is not supported by the artifact format")
    else:  # integers and bools: their own width when the format has it, else int64 (values kept)
        options = [T.encode_dense(t, T.TORCH_TO_NAME.get(t.dtype, "int64"), key)]
    best = min(options, key=lambda e: e.nbytes)
    best.meta["shape"] = list(t.shape)
    if t.is_floating_point() and t.dtype != torch.float32:  # restored on load (float32 tensors: no key)
        if t.dtype not in RESTORED_FLOATS.values():
            raise ConfigError(f"cannot save tensor {name}: dtype {t.dtype} is not supported by the artifact format "
                              f"(float32, {', '.join(RESTORED_FLOATS)})")
        best.meta["tdtype"] = str(t.dtype).removeprefix("torch.")
    if shared is not None:  # the width the ids are stored at: k + 1 symbols when some are pruned (zero id)
        weight_bits = T.bits_for(best.meta.get("alpha", shared[0].numel()))
    report = TensorReport(name, tuple(t.shape), t.numel(), nnz, best.meta["enc"], best.nbytes,
                          best.meta.get("ibits"), weight_bits, best.streams)
    return best, report


def _encode_int_codes(name: str, t: torch.Tensor, bits: int, key: str,
                      signed: bool = True) -> tuple[T.Encoded, TensorReport]:
    """Integer codes packed at ``bits`` bits (``quantized.encode_int_codes``), decoded exactly."""
    from deepshrink.artifact.quantized import encode_int_codes

    enc = encode_int_codes(t, bits, key, signed=signed)
    enc.meta["shape"] = list(t.shape)
    report = TensorReport(name, tuple(t.shape), t.numel(), int((t != 0).sum()), "quant", enc.nbytes, None, bits,
                          enc.streams)
    return enc, report


def encode_model(model: nn.Module, policy: StoragePolicy | None = None,
                 info: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, bytes], list[TensorReport]]:
    policy = policy or StoragePolicy()
    tensors_meta: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    reports = []
    # integer buffers a module stores bit-packed (``deepshrink_int_codes``: buffer name -> bits, signed, e.g.
    # Int8Linear; ``deepshrink_uint_codes``: unsigned, e.g. codebook indices)
    int_codes = {f"{m}.{b}" if m else b: (bits, attr == "deepshrink_int_codes")
                 for m, module in model.named_modules()
                 for attr in ("deepshrink_int_codes", "deepshrink_uint_codes")
                 for b, bits in getattr(module, attr, {}).items()}
    for i, (name, (t, shared)) in enumerate(plain_state(model).items()):
        if name in int_codes and shared is None:
            enc, rep = _encode_int_codes(name, t, int_codes[name][0], f"t{i}", signed=int_codes[name][1])
        else:
            enc, rep = _encode(name, t, shared, f"t{i}", policy)
        tensors_meta[name] = enc.meta
        blobs.update(enc.blobs)
        reports.append(rep)
    meta = {"format": FORMAT, "arch": arch_record(model), "tensors": tensors_meta, "info": info or {}}
    return meta, blobs, reports


#: why a module of a runtime (``deepshrink_runtime``) has no artifact form
RUNTIME_REFUSALS = {
    "onnxruntime": "it is an ONNX Runtime graph with no PyTorch weights; export it with format 'onnx' (the graph it "
                   "runs), or save the model it was converted from",
    "inductor": "it is Inductor-compiled int8 code with no file form; save the model it was compiled from (for an "
                "encoder, the quantize_int8 model)",
}


def torch_int8_layers(model: nn.Module) -> list[str]:
    """Layers running PyTorch's own int8 kernels (``torch.ao.nn.quantized``: packed weights, no plain tensors)."""
    return [name or type(m).__name__ for name, m in model.named_modules()
            if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized",
                                              "torch.ao.nn.intrinsic.quantized"))
            and not name.endswith("_packed_params")]


def some(names: list[str], most: int = 3) -> str:
    """``a, b, c, ...``: the first ``most`` names, with an ellipsis when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def refuse_unsavable(model: nn.Module) -> None:
    """ConfigError when ``model`` quantizes activations (run-time state that an artifact does not store), or
    ModelError when it is a compiled or ONNX Runtime module (``RUNTIME_REFUSALS``)."""
    from deepshrink.quantize.modules import input_quantizers

    runtime = getattr(model, "deepshrink_runtime", None)
    if runtime is not None:
        raise ModelError(f"cannot save {type(model).__name__}: "
                         f"{RUNTIME_REFUSALS.get(runtime, 'it is a runtime module without tensors')}")

    int8 = torch_int8_layers(model)
    if int8:
        raise ModelError(f"cannot save {type(model).__name__}: {len(int8)} layers ({some(int8)}) run torch int8 "
                         "kernels with packed weights, which an artifact does not hold; save the model it was "
                         "converted from (or its quantize() form, stored as integer codes) and convert after loading")
    acts = input_quantizers(model)
    if acts:
        raise ConfigError(f"cannot save {type(model).__name__}: {len(acts)} layers ({some(list(acts))}) "
                          "quantize their inputs, which an artifact does not store; save "
                          "deepshrink.quantize.without_input_quantizers(model) (the weights keep their codes) or "
                          "convert it for integer execution with deepshrink.quantize.backends.to_int8")


def save(model: nn.Module, path: str | os.PathLike[str], policy: StoragePolicy | None = None,
         info: dict[str, Any] | None = None) -> SaveReport:
    """Write ``model`` atomically as an artifact and report the bytes of every tensor and stream.

    Quantized weights (frozen codes or QAT fake quantizers, frozen on a copy) are stored as their integer
    codes (``save_quantized``). Activation quantizers are run-time state an artifact does not hold: a model
    with them is a ConfigError (save ``without_input_quantizers(model)``, or convert with ``to_int8``)."""
    from deepshrink.quantize.modules import QuantizedWeight
    from deepshrink.quantize.qat import TRAINABLE

    refuse_unsavable(model)
    if any(isinstance(m, (QuantizedWeight, *TRAINABLE)) for m in model.modules()):
        from deepshrink.artifact.quantized import save_quantized

        return save_quantized(model, path, policy, info)
    meta, blobs, reports = encode_model(model, policy, info)
    nbytes = container.write_container(path, meta, blobs)
    meta_bytes = nbytes - sum(len(b) for b in blobs.values())
    return SaveReport(str(path), nbytes, meta_bytes, reports)


MAX_ARCH_CHARS = 16384  # JSON size of the architecture kwargs
MAX_LOAD_ELEMENTS = 1 << 28  # tensor elements an artifact may ask the loader to allocate (1 GiB of fp32)


def _rebuild(zoo: str, kwargs: dict[str, Any], where: str) -> nn.Module:
    """Build the recorded architecture: sized on the meta device first, so hostile kwargs cannot crash or
    exhaust memory; any failure is a CorruptArtifactError."""
    if len(json.dumps(kwargs)) > MAX_ARCH_CHARS:  # e.g. a million-layer MLP: too many modules to build
        raise CorruptArtifactError(f"{where}: architecture record is over {MAX_ARCH_CHARS} characters")
    try:
        with torch.device("meta"):
            shadow = create(zoo, **kwargs)
        numel = sum(t.numel() for t in shadow.state_dict().values())
        if numel > MAX_LOAD_ELEMENTS:
            raise CorruptArtifactError(f"{where}: architecture declares {numel} tensor elements, "
                                       f"over the {MAX_LOAD_ELEMENTS} limit")
        return create(zoo, **kwargs)
    except DeepShrinkError as exc:
        if isinstance(exc, CorruptArtifactError):
            raise
        raise CorruptArtifactError(f"{where}: cannot rebuild architecture: {exc}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, IndexError, KeyError,
            ImportError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptArtifactError(f"{where}: cannot rebuild architecture: {reason}") from None


def _replay_structure(model: nn.Module, arch: dict[str, Any], where: str) -> nn.Module:
    """Apply the recorded substitutions (factorized / tied / hashed layers, ``deepshrink.factorize``) and layer
    sizes (structured pruning) to a freshly built model, in the order they happened: the sizes were recorded
    after the first ``resized_at`` substitutions (all of them in artifacts written before that key existed)."""
    transforms = arch.get("transforms") or []
    if not isinstance(transforms, list):
        raise CorruptArtifactError(f"{where}: cannot replay architecture transforms: arch transforms must be a list")
    at = arch.get("resized_at", len(transforms)) if arch.get("resized") else len(transforms)
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= len(transforms):
        raise CorruptArtifactError(f"{where}: resized_at must be an integer in 0..{len(transforms)}, got {at!r}")
    from deepshrink.factorize import replay_transforms
    from deepshrink.prune.resize import apply_resized

    for part, sizes in ((transforms[:at], arch.get("resized")), (transforms[at:], None)):
        try:
            model = replay_transforms(model, part)
        except DeepShrinkError as exc:
            raise CorruptArtifactError(f"{where}: cannot replay architecture transforms: {exc}") from None
        if sizes:  # structurally pruned layers (deepshrink.prune), re-allocated at recorded sizes
            try:
                model = apply_resized(model, sizes)
            except DeepShrinkError as exc:
                raise CorruptArtifactError(f"{where}: cannot resize pruned layers: {exc}") from None
    return model


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild a plain ``nn.Module`` (eval mode) from an artifact; no code in the file is executed.

    A zoo model is rebuilt from the file's JSON record. A model of your own (any other ``nn.Module``) is
    never rebuilt from the file: pass ``model``, a freshly built instance of its architecture, which is
    resized and substituted as recorded (structured pruning, factorization), filled and returned."""
    box = container.read_container(path)
    where = str(path)
    meta = box.meta
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptArtifactError(f"{where}: not a deepshrink model artifact")
    arch = meta.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("zoo"), str) or not isinstance(
            arch.get("kwargs", {}), dict):
        raise CorruptArtifactError(f"{where}: malformed architecture record")
    given = model  # the caller's model (None: rebuilt from the file's record)
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"load: model must be an nn.Module built like the saved one, got {type(model).__name__}")
    elif user_model_name(arch) is not None:
        raise ArtifactError(f"{where} holds a model of your own ({user_model_name(arch)[:120]}): deepshrink never imports "
                            "code named in a file; build it and pass it: deepshrink.load(path, model=...) "
                            "(CLI: --model package.module:factory)")
    else:
        if arch["zoo"] == "hf_bert" and arch["zoo"] not in MODELS:  # registered by the optional transformers extra
            import deepshrink.transformers  # noqa: F401
        if arch["zoo"] not in MODELS:
            raise CorruptArtifactError(f"{where}: unknown architecture {arch['zoo']!r}")
        model = _rebuild(arch["zoo"], arch.get("kwargs", {}), where)
    try:
        model = _replay_structure(model, arch, where)
        expected = model.state_dict()
        stored = meta.get("tensors")
        if not isinstance(stored, dict) or set(stored) != set(expected):
            names = set(stored) if isinstance(stored, dict) else set()
            extra = sorted(names - set(expected))[:3]
            missing = sorted(set(expected) - names)[:3]
            raise CorruptArtifactError(f"{where}: tensors do not match the architecture "
                                       f"(unknown {extra}, missing {missing})")
        for name, tmeta in stored.items():
            if not isinstance(tmeta, dict) or tmeta.get("shape") != list(expected[name].shape):
                raise CorruptArtifactError(f"{where}: tensor {name} has the wrong shape for the architecture")
    except CorruptArtifactError as exc:
        if given is None:
            raise
        # a sound file and a model of another architecture: the caller's mistake, not corruption
        saved = user_model_name(arch) or arch["zoo"]
        reason = str(exc).removeprefix(f"{where}: ")
        raise ModelError(f"{where} does not fit the {type(given).__name__} passed as model= (the file holds "
                         f"{saved[:120]}): {reason}") from None
    state, dtypes = {}, {}
    for name, tmeta in stored.items():
        shape = tuple(expected[name].shape)
        dtype = expected[name].dtype
        if "tdtype" in tmeta:
            if tmeta["tdtype"] not in RESTORED_FLOATS or not dtype.is_floating_point:
                raise CorruptArtifactError(f"{where}: tensor {name} has an invalid dtype record {tmeta['tdtype']!r}")
            dtype = dtypes[name] = RESTORED_FLOATS[tmeta["tdtype"]]
        state[name] = T.decode_tensor(tmeta, shape, box.blobs, f"{where}: {name}").to(dtype)
    model.load_state_dict(state, strict=True)
    for name, dtype in dtypes.items():  # the saved model's float dtype (load_state_dict keeps the fresh model's)
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        tensor = getattr(module, attr)
        if tensor.dtype != dtype:
            tensor.data = state[name]
    setattr(model, ARCH_ATTR, copy.deepcopy(arch))  # the record it was built from: saved again, it reloads the same
    return model.eval()
