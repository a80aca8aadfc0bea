"""What each recipe stage does to the model, driving the existing engines.

Every function takes the validated stage, the mutable :class:`RunState` and the stage's name, and
leaves the compressed model in ``state.model``. Errors are ``ConfigError``s that the runner prefixes
with the stage (index and kind).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from deepshrink.artifact import StoragePolicy
from deepshrink.artifact.model_io import round_small_tensors
from deepshrink.core.errors import ConfigError
from deepshrink.core.fileio import ensure_dir
from deepshrink.recipe import schema as S
from deepshrink.train import TrainConfig, Trainer


@dataclass
class RunState:
    """The model being compressed and what every stage needs around it."""

    model: nn.Module
    train: Dataset
    calibration: Dataset
    example: Any
    seed: int = 0
    policy: StoragePolicy = field(default_factory=StoragePolicy)
    progress: bool | None = None
    checkpoint_dir: Path | None = None
    factory: Callable[[], nn.Module] | None = None
    notes: list[str] = field(default_factory=list)
    text: Any = None  # a deepshrink.data.sentences.TextSplits for sentence encoders

    def checkpoint(self, name: str) -> Path | None:
        return self.checkpoint_dir / f"{name}.pt" if self.checkpoint_dir is not None else None


def train_config(spec: S.TrainSpec, seed: int) -> TrainConfig:
    """The trainer's config for ``spec`` (its own seed, else the recipe's)."""
    fields = spec.model_dump(exclude={"seed", "name", "kind"})
    return TrainConfig(**fields, seed=seed if spec.seed is None else spec.seed)


def _fit(state: RunState, model: nn.Module, spec: S.TrainSpec, what: str, *, checkpoint: str | None = None,
         seed_offset: int = 0, loss_fn: Any = None) -> None:
    cfg = train_config(spec, state.seed)
    if seed_offset:
        cfg = cfg.replace(seed=cfg.seed + seed_offset)
    if cfg.epochs == 0:
        return
    Trainer(model, cfg, loss_fn=loss_fn, progress=state.progress, description=what,
            checkpoint=state.checkpoint(checkpoint) if checkpoint else None).fit(state.train)


def select(model: nn.Module, stage: S.Selection) -> dict[str, nn.Module]:
    """The Linear/Conv layers a stage selects (patterns: glob, ``re:``, ``type:``)."""
    from deepshrink.prune.select import select_layers

    layers = [S.resolve_pattern(p) for p in stage.layers] if stage.layers is not None else None
    return select_layers(model, layers, exclude=[S.resolve_pattern(p) for p in stage.exclude],
                         exclude_first=stage.exclude_first, exclude_last=stage.exclude_last)


def per_layer(selected: dict[str, nn.Module], overrides: dict[str, Any], default: Any) -> dict[str, Any]:
    """Each selected layer's value: ``default`` unless an override pattern matches it (later ones win)."""
    from deepshrink.prune.select import resolve_overrides

    return resolve_overrides(selected, {S.resolve_pattern(k): v for k, v in overrides.items()}, default)


def check_selection(model: nn.Module, stage: Any) -> None:
    """Fail early (before any work) when a stage's layer patterns match nothing in ``model``."""
    if isinstance(stage, (S.FinetuneStage, S.DistillStage, S.ExportStage)):
        return
    if isinstance(stage, S.PruneStage) and stage.method == "structured":
        from deepshrink.prune.select import matches

        named = [(n, m) for n, m in model.named_modules() if n]
        for kind, patterns in (("overrides", list(stage.overrides)), ("exclude", list(stage.exclude))):
            for p in patterns:
                if not any(matches(S.resolve_pattern(p), n, m) for n, m in named):
                    raise ConfigError(f"{kind} pattern {p!r} matches no layer of {type(model).__name__}")
        return
    selected = select(model, stage)
    for attr in ("overrides", "index_bits_overrides", "skip"):
        patterns = getattr(stage, attr, None)
        if patterns:
            try:
                per_layer(selected, dict.fromkeys(patterns, 0) if attr == "skip" else patterns, 0)
            except ConfigError as exc:
                raise ConfigError(f"{attr}: {str(exc).replace('override pattern', 'pattern')}") from None


def finetune(stage: S.FinetuneStage, state: RunState, name: str) -> None:
    _fit(state, state.model, stage, name, checkpoint=name)


def prune(stage: S.PruneStage, state: RunState, name: str) -> None:
    """Magnitude pruning with per-layer iterative rounds (Han et al.; Deep Compression's exact loop), any
    other criterion / scope / schedule through ``deepshrink.prune.unstructured``, or channel removal."""
    model = state.model
    if stage.method in S.TRANSFORMER_PRUNING:
        from deepshrink.recipe import text_stages

        text_stages.prune(stage, state, name)
        return
    if stage.method == "structured":
        from deepshrink.prune.structured import structured

        ratio: Any = stage.sparsity
        if stage.overrides:
            ratio = {"*": stage.sparsity, **{S.resolve_pattern(k): v for k, v in stage.overrides.items()}}
        state.model = structured(model, state.example, ratio=ratio, importance=stage.importance,
                                 ignore=[S.resolve_pattern(p) for p in stage.exclude], round_to=stage.round_to)
        if stage.retrain is not None:
            _fit(state, state.model, stage.retrain, f"{name} fine-tune", checkpoint=name)
        return
    selected = select(model, stage)
    ratios = per_layer(selected, stage.overrides, stage.sparsity)
    if stage.method == "magnitude":
        from deepshrink.prune.unstructured import prune_layer

        rounds = stage.steps if stage.schedule == "iterative" else 1
        for r in range(1, rounds + 1):
            for layer, module in selected.items():
                keep = round(1.0 - ratios[layer], 12)
                prune_layer(module, keep ** (r / rounds))
            if stage.retrain is not None:
                _fit(state, model, stage.retrain, f"{name} {r}/{rounds}", seed_offset=r)
        return
    from deepshrink.prune.engine import unstructured

    unstructured(model, stage.sparsity, importance=stage.importance, scope=stage.scope,
                 layers=list(selected), overrides=ratios if stage.scope == "layer" else None,
                 nm=tuple(stage.nm) if stage.nm else None, threshold=stage.threshold,
                 schedule=stage.schedule, schedule_kwargs={"steps": stage.steps},
                 train=train_config(stage.retrain, state.seed) if stage.retrain is not None else None,
                 data=state.train, calibration=state.calibration)


def cluster(stage: S.ClusterStage, state: RunState, name: str) -> None:
    """k-means weight sharing per layer (masks baked in first: zeros stay zero), then centroid fine-tuning."""
    from deepshrink.prune.masks import remove_masks
    from deepshrink.quantize.kmeans import share_weights

    remove_masks(state.model)
    selected = select(state.model, stage)
    bits = per_layer(selected, stage.overrides, stage.bits)
    for layer, module in selected.items():
        share_weights(module, bits[layer], init=stage.init)
    if stage.finetune is not None:
        _fit(state, state.model, stage.finetune, f"{name} centroids", checkpoint=name)


_SCHEME_BITS = {"int": "bits", "kmeans": "bits", "pow2": "bits", "fixed_point": "bits", "static": "weight_bits",
                "qat": "weight_bits"}


def quant_config(stage: S.QuantizeStage, selected: dict[str, nn.Module]) -> Any:
    """The ``deepshrink.quantize`` config of a stage, restricted to the selected layers."""
    import deepshrink.quantize as Q

    names = "|".join(re.escape(n) for n in selected)
    common: dict[str, Any] = {"layers": names or ".*"}
    g, gs = stage.granularity, stage.group_size
    build: dict[str, Callable[[int], Any]] = {
        "int8_static": lambda b: Q.Int8StaticConfig(**common, observer=stage.observer, granularity=g, group_size=gs),
        "int8_dynamic": lambda b: Q.Int8DynamicConfig(**common, granularity=g),
        "int": lambda b: Q.IntWeightConfig(**common, bits=b, granularity=g, group_size=gs),
        "static": lambda b: Q.StaticConfig(**common, weight_bits=b, act_bits=stage.act_bits or 8, granularity=g,
                                           group_size=gs, observer=stage.observer),
        "qat": lambda b: Q.QATConfig(**common, weight_bits=b, act_bits=stage.act_bits, granularity=g,
                                     group_size=gs, lsq=stage.lsq),
        "kmeans": lambda b: Q.KMeansConfig(**common, bits=b),
        "pow2": lambda b: Q.PowerOfTwoConfig(**common, bits=b, granularity=g),
        "fixed_point": lambda b: Q.FixedPointConfig(**common, bits=b),
        "binary": lambda b: Q.BinaryConfig(**common, granularity=g),
        "ternary": lambda b: Q.TernaryConfig(**common, granularity=g),
    }
    cfg = build[stage.scheme](stage.bits)
    overrides: list[tuple[str, Any]] = []
    if stage.overrides:
        if stage.scheme not in _SCHEME_BITS:
            raise ConfigError(f"overrides: scheme {stage.scheme} has no per-layer bits")
        bits = per_layer(selected, stage.overrides, stage.bits)
        overrides += [(re.escape(n), replace(cfg, **{_SCHEME_BITS[stage.scheme]: b}))
                      for n, b in bits.items() if b != stage.bits]
    if stage.skip:
        skipped = per_layer(selected, {p: True for p in stage.skip}, False)
        overrides = [(re.escape(n), Q.SkipConfig()) for n, s in skipped.items() if s] + overrides
    return replace(cfg, overrides=tuple(overrides)) if overrides else cfg


def quantize(stage: S.QuantizeStage, state: RunState, name: str) -> None:
    """Post-training quantization (calibrated on ``calibration`` training samples) or QAT then freeze."""
    from deepshrink.quantize import freeze
    from deepshrink.quantize import quantize as run_quantize

    from torch.utils.data import Subset

    if stage.scheme in ("int8_per_token", "none"):
        from deepshrink.recipe import text_stages

        text_stages.quantize(stage, state, name)
        return
    cfg = quant_config(stage, select(state.model, stage))
    calib = Subset(state.calibration, range(min(stage.calibration, len(state.calibration))))
    state.model = run_quantize(state.model, cfg, calib)
    if stage.scheme == "qat":
        if stage.train is not None:
            _fit(state, state.model, stage.train, f"{name} QAT", checkpoint=name)
        freeze(state.model)


def factorize(stage: S.FactorizeStage, state: RunState, name: str) -> None:
    """Compact replacement of the selected layers (recorded so the artifact rebuilds it)."""
    from deepshrink import factorize as fz

    layers = list(select(state.model, stage))
    if stage.layers is None:  # the default "every Linear and Conv": only those this method can replace
        modules = dict(state.model.named_modules())
        layers = [n for n in layers if _factorizable(modules[n], stage)]
        if not layers:
            raise ConfigError(f"no layer of the model can be replaced by {stage.method}; name them with layers:")
    if stage.method in ("svd", "tucker2"):
        spec = fz.FactorSpec(method=stage.method, rank=stage.rank, energy=stage.energy,
                             compression=stage.compression)
        fz.factorize(state.model, {layer: spec for layer in layers})
    else:
        for layer in layers:
            if stage.method == "depthwise_separable":
                fz.to_depthwise_separable(state.model, layer, multiplier=stage.multiplier or 1)
            elif stage.method == "grouped_pointwise":
                fz.to_grouped_pointwise(state.model, layer, groups=stage.groups)
            else:
                fz.hash_layer(state.model, layer, compression=stage.compression, seed=state.seed)
    if stage.finetune is not None:
        _fit(state, state.model, stage.finetune, f"{name} fine-tune", checkpoint=name)


def _factorizable(module: nn.Module, stage: S.FactorizeStage) -> bool:
    """Whether ``stage``'s method can replace ``module`` (type, groups, and an explicit SVD rank below its
    smaller side), for the default layer selection."""
    if type(module) is nn.Conv2d:
        if module.groups != 1 or stage.method == "hash":
            return False
        fits = min(module.out_channels, module.in_channels * module.kernel_size[0] * module.kernel_size[1])
    elif type(module) is nn.Linear:
        if stage.method not in ("svd", "hash"):
            return False
        fits = min(module.in_features, module.out_features)
    else:
        return False
    rank = stage.rank if isinstance(stage.rank, int) else None
    return not (stage.method == "svd" and rank is not None and rank > fits)


def distill(stage: S.DistillStage, state: RunState, name: str) -> None:
    """Train a fresh zoo ``student`` on the current model's softened logits; the student replaces it."""
    from deepshrink.models import create
    from deepshrink.train import seed_everything

    teacher = copy.deepcopy(state.model).eval()
    seed_everything(state.seed)
    student = create(stage.student, **stage.student_args)
    cfg = train_config(stage.train, state.seed)
    try:
        from deepshrink.distill import DistillConfig
        from deepshrink.distill import distill as run_distill
    except ImportError:
        from deepshrink.factorize import kd_loss

        if cfg.epochs:
            Trainer(student, cfg, loss_fn=kd_loss(teacher, temperature=stage.temperature, alpha=stage.alpha),
                    progress=state.progress, description=f"{name} distill",
                    checkpoint=state.checkpoint(name)).fit(state.train)
    else:
        run_distill(student, teacher, state.train,
                    DistillConfig(temperature=stage.temperature, alpha=stage.alpha, train=cfg),
                    checkpoint=state.checkpoint(name), progress=state.progress)
    state.model = student


def encode(stage: S.EncodeStage, state: RunState, name: str) -> None:
    """Set how this and later artifacts store tensors."""
    index_bits: dict[str, int] = {}
    if stage.index_bits_overrides:
        selected = select(state.model, stage)
        chosen = per_layer(selected, stage.index_bits_overrides, None)
        index_bits = {f"{n}.weight": b for n, b in chosen.items() if b is not None}
    if stage.small_dtype == "float16":
        round_small_tensors(state.model)
    state.policy = StoragePolicy(coding=stage.coding, index_bits=stage.index_bits, layer_index_bits=index_bits,
                                 sparse=stage.sparse, value_dtype=stage.value_dtype, small_dtype=stage.small_dtype)


def export(stage: S.ExportStage, state: RunState, name: str, out_dir: Path) -> Path:
    """Write the model in a deployment format (ONNX, TorchScript, safetensors or a deepshrink artifact)."""
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors", "deepshrink": ".dsk"}
    path = out_dir / (stage.file or f"model{suffix[stage.format]}")
    if path.parent != out_dir and not path.resolve().is_relative_to(out_dir.resolve()):
        raise ConfigError(f"file: {stage.file!r} must stay inside the output folder")
    ensure_dir(path.parent)  # a sub-folder of the output folder named by file:
    axes = None
    if stage.format == "onnx" and isinstance(state.example, tuple) and len(state.example) == 2:
        from deepshrink.export.onnx import default_dynamic_axes  # a sentence encoder: any batch and length

        axes = default_dynamic_axes(state.example, 1, sequence=True)
    export_model(state.model, path, stage.format, state.example, state.policy, dynamic_axes=axes)
    return path


def export_model(model: nn.Module, path: Path, fmt: str, example: Any,
                 policy: StoragePolicy | None = None, *, dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Export through ``deepshrink.export`` when installed; safetensors/deepshrink work without it.
    ``dynamic_axes`` (ONNX): default the batch axis of every input and output."""
    if fmt == "deepshrink":
        from deepshrink.recipe.models import save_model

        save_model(model, path, policy)
        return
    try:
        from deepshrink.export import export_model as _export
    except ImportError:
        _export = None
    if _export is not None:
        _export(model, path, fmt, example_inputs=example, dynamic_axes=dynamic_axes)
        return
    if fmt != "safetensors":
        raise ConfigError(f"format {fmt}: deepshrink.export is not available in this installation")
    from safetensors.torch import save as st_save

    from deepshrink.artifact.model_io import plain_state
    from deepshrink.core.fileio import atomic_write_bytes

    state = {k: t.contiguous().clone() for k, (t, _) in plain_state(model).items()}
    atomic_write_bytes(path, st_save(state))
