"""The recipe schema: an ordered list of typed stages, validated by pydantic (unknown keys are errors).

A recipe is YAML like::

    name: deep-compression-lenet300
    model: lenet300
    dataset: mnist5k
    seed: 0
    stages:
      - kind: finetune          # leading finetune stages train the baseline
        epochs: 40
      - kind: prune
        sparsity: 0.9
        overrides: {fc1: 0.975}
        schedule: iterative
        steps: 5
        retrain: {epochs: 8, lr: 0.05}

Every model is frozen, so a recipe is a value: ``Recipe.model_validate(r.model_dump()) == r``.
Layer patterns are globs on module names (``fc*``), ``re:<regex>`` (full match) or ``type:<nn class>``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

TRANSFORMER_PRUNING = ("heads", "ffn")
STAGE_KINDS = ("prune", "quantize", "cluster", "factorize", "distill", "finetune", "encode", "export")
Unit = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
Bits = Annotated[int, Field(ge=1, le=8)]
#: a random seed (torch takes 0..2^32-1 from the CLI; larger values overflow its generator)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: a stage name: part of file names (``NN-<name>.dsk``, ``checkpoints/<name>.pt``), so no path separators
StageName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=80)]
IndexBits = Annotated[int, Field(ge=1, le=16)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def check_pattern(pattern: str) -> str:
    """A layer pattern: glob, ``re:<regex>`` or ``type:<torch.nn class>``; invalid ones are rejected early."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"layer pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    elif pattern.startswith("type:"):
        cls = getattr(nn, pattern[5:], None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"layer pattern {pattern!r}: {pattern[5:]!r} is not a torch.nn module class")
    return pattern


def resolve_pattern(pattern: str) -> str | type:
    """The form ``deepshrink.prune.select`` understands: a module type for ``type:``, else the string."""
    return getattr(nn, pattern[5:]) if pattern.startswith("type:") else pattern


def pattern_regex(pattern: str) -> str:
    """A regex equivalent of a name pattern (``type:`` patterns need the model; see the runner)."""
    return pattern[3:] if pattern.startswith("re:") else fnmatch.translate(pattern).removesuffix(r"\Z")


#: A layer pattern, checked where it is declared (list items and dict keys alike).
Pattern = Annotated[str, Field(min_length=1), AfterValidator(check_pattern)]


def check_augment(spec: str) -> str:
    """A training augmentation spec (``shift:2``, ``hflip``...; deepshrink.data.augment), rejected early."""
    from deepshrink.core.errors import ConfigError
    from deepshrink.data.augment import parse_augment

    try:
        parse_augment(spec)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return spec


AugmentSpec = Annotated[str, AfterValidator(check_augment)]


def _changed(model: BaseModel, *keys: str) -> list[str]:
    """Those of ``keys`` whose value differs from the field's default (a full dump validates back)."""
    fields = type(model).model_fields
    return [k for k in keys if getattr(model, k) != fields[k].get_default(call_default_factory=True)]


class Selection(_Frozen):
    """Which layers a stage touches: patterns (all prunable layers when omitted) minus exclusions."""

    layers: list[Pattern] | None = None
    exclude: list[Pattern] = Field(default_factory=list)
    exclude_first: bool = False
    exclude_last: bool = False


class TrainSpec(_Frozen):
    """Training settings (``deepshrink.train.TrainConfig``); ``seed`` defaults to the recipe's seed."""

    epochs: Annotated[int, Field(ge=0)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.01
    momentum: Unit = 0.9
    weight_decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: Annotated[int, Field(ge=1)] = 10
    gamma: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.1
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    label_smoothing: Unit = 0.0
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None
    augment: AugmentSpec | None = None
    seed: Seed | None = None


class StageBase(Selection):
    name: StageName | None = None


class PruneStage(StageBase):
    """Pruning to ``sparsity`` of the weights. ``method``: ``magnitude`` (Han et al. / Deep Compression: per-layer
    |w| masks over ``steps`` iterative rounds, round r retrained with seed + r), ``unstructured`` (the pruning
    engine: any importance, scope, schedule, N:M), ``structured`` (channels removed), or, for BERT-family
    sentence encoders on a text dataset, ``heads`` / ``ffn`` (``sparsity`` of the attention heads / FFN neurons
    removed, ranked on ``calibration`` sentences, optionally followed by a least-squares ``refit``)."""

    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "unstructured", "structured", "heads", "ffn"] = "unstructured"
    sparsity: Unit = 0.5
    overrides: dict[Pattern, Unit] = Field(default_factory=dict)
    importance: str = "l1"
    scope: Literal["layer", "global"] = "layer"
    schedule: Literal["oneshot", "iterative", "agp", "lasso"] = "oneshot"
    steps: Annotated[int, Field(ge=1, le=1000)] = 1
    retrain: TrainSpec | None = None
    nm: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)] | None = None
    threshold: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    round_to: Annotated[int, Field(ge=1)] = 1
    refit: bool = False
    ridge: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-4
    calibration: Annotated[int, Field(ge=1)] = 512

    @field_validator("importance")
    @classmethod
    def _importance(cls, v: str) -> str:
        from deepshrink.prune.importance import CRITERIA

        if v not in CRITERIA:
            raise ValueError(f"unknown importance {v!r}; choose one of: {', '.join(CRITERIA.names())}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PruneStage:
        if self.nm is not None and not self.nm[0] < self.nm[1]:
            raise ValueError(f"nm: N:M needs N < M, got {self.nm[0]}:{self.nm[1]}")
        if self.method == "magnitude" and (self.importance != "l1" or self.scope != "layer" or self.nm
                                           or self.threshold is not None or self.schedule not in ("oneshot", "iterative")):
            raise ValueError("method: magnitude is per-layer |w| with a oneshot or iterative schedule; "
                             "use method: unstructured for other importance, scope, N:M or threshold settings")
        if self.method in TRANSFORMER_PRUNING:
            used = _changed(self, "importance", "schedule", "steps", "retrain", "nm", "threshold", "overrides",
                            "layers", "exclude", "exclude_first", "exclude_last",
                            *(("round_to",) if self.method == "heads" else ()))
            if used:
                takes = "sparsity, scope, " + ("round_to, " if self.method == "ffn" else "")
                raise ValueError(f"{used[0]}: not used by method {self.method} (it takes {takes}refit, ridge and "
                                 "calibration)")
            if not self.refit and _changed(self, "ridge"):
                raise ValueError("ridge: only used with refit: true")
        elif _changed(self, "refit", "ridge", "calibration"):
            raise ValueError(f"{_changed(self, 'refit', 'ridge', 'calibration')[0]}: only methods heads and ffn take it")
        if self.scope == "global" and self.overrides:
            raise ValueError("overrides: per-layer overrides need scope: layer")
        if self.schedule != "oneshot" and self.steps > 1 and self.retrain is None and self.method == "unstructured":
            raise ValueError("retrain: a multi-step schedule needs retrain settings between steps")
        return self


class QuantizeStage(StageBase):
    """Quantization (``deepshrink.quantize``): PTQ schemes, or QAT trained with ``train`` then frozen. For
    BERT-family sentence encoders: ``int8_per_token`` (int8 Linear codes, per-token activations, optional
    SmoothQuant ``smooth`` alpha; ``static_inputs: true`` gives the Linears that read a LayerNorm one
    calibrated uint8 input range instead of per-token scales, faster compiled; ``compile: true`` scores the
    model as deployed, compiled by Inductor onto oneDNN int8 kernels) and ``embedding`` (the word-embedding
    table as int8 or a k-means codebook; ``scheme: none`` compresses only the table)."""

    kind: Literal["quantize"] = "quantize"
    scheme: Literal["int8_static", "int8_dynamic", "int", "static", "qat", "kmeans", "pow2", "fixed_point",
                    "binary", "ternary", "int8_per_token", "none"] = "int8_static"
    bits: Bits = 8
    act_bits: Annotated[int, Field(ge=2, le=8)] | None = None
    granularity: Literal["per_tensor", "per_channel", "per_group"] = "per_channel"
    group_size: Annotated[int, Field(ge=1)] = 128
    observer: Literal["minmax", "moving_average", "percentile", "mse", "entropy"] = "minmax"
    lsq: bool = False
    overrides: dict[Pattern, Bits] = Field(default_factory=dict)
    skip: list[Pattern] = Field(default_factory=list)
    calibration: Annotated[int, Field(ge=1)] = 512
    train: TrainSpec | None = None
    smooth: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] | None = None
    embedding: Literal["int8", "codebook"] | None = None
    embedding_bits: Bits = 4
    compile: bool = False
    static_inputs: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeStage:
        if self.scheme == "int8_per_token":
            if self.bits not in (7, 8):
                raise ValueError(f"bits: scheme int8_per_token stores 7- or 8-bit weight codes, got {self.bits} "
                                 "(7 keeps AVX2 CPUs without VNNI from saturating)")
            used = _changed(self, "act_bits", "granularity", "group_size", "observer", "lsq", "overrides", "layers",
                            "exclude", "exclude_first", "exclude_last")
            if used:
                raise ValueError(f"{used[0]}: not used by scheme int8_per_token (per-channel weights, per-token "
                                 "activations; it takes bits, skip, smooth, static_inputs, calibration, compile "
                                 "and embedding)")
            if self.smooth is None and not self.static_inputs and _changed(self, "calibration"):
                raise ValueError("calibration: scheme int8_per_token calibrates only for smooth (SmoothQuant) "
                                 "or static_inputs")
            typed = [p for p in self.skip if p.startswith("type:")]
            if typed:
                raise ValueError(f"skip: {typed[0]!r}: int8_per_token skips Linear layers by name (glob or re:)")
        elif self.scheme == "none":
            used = _changed(self, "bits", "act_bits", "granularity", "group_size", "observer", "lsq", "overrides",
                            "skip", "calibration", "layers", "exclude", "exclude_first", "exclude_last")
            if used:
                raise ValueError(f"{used[0]}: not used by scheme none (it compresses only the embedding table)")
        elif self.smooth is not None:
            raise ValueError("smooth: SmoothQuant applies to scheme int8_per_token")
        if self.embedding is not None and self.scheme not in ("int8_per_token", "none"):
            raise ValueError(f"embedding: the word-embedding table of a sentence encoder is compressed by scheme "
                             f"int8_per_token or none, not {self.scheme}")
        if self.static_inputs and self.scheme != "int8_per_token":
            raise ValueError("static_inputs: only scheme int8_per_token takes it (static uint8 inputs of the "
                             "Linears that read a LayerNorm)")
        if self.compile and self.scheme != "int8_per_token":
            raise ValueError("compile: only scheme int8_per_token compiles (Inductor int8 kernels)")
        if self.scheme == "none" and self.embedding is None:
            raise ValueError("scheme: none quantizes only the embedding table; set embedding: int8 or codebook")
        if _changed(self, "embedding_bits") and self.embedding != "codebook":
            raise ValueError("embedding_bits: only embedding: codebook takes it")
        if self.scheme in ("qat", "static", "pow2", "fixed_point", "int") and self.bits < 2:
            raise ValueError(f"bits: scheme {self.scheme} needs at least 2 bits, got {self.bits}")
        if self.scheme in ("int8_static", "int8_dynamic") and self.bits != 8:
            raise ValueError(f"bits: scheme {self.scheme} is 8-bit; use scheme int or static for {self.bits}")
        if self.train is not None and self.scheme != "qat":
            raise ValueError("train: only scheme qat trains; add a finetune stage instead")
        return self


class ClusterStage(StageBase):
    """k-means weight sharing (Deep Compression): 2^bits shared values per layer, zeros stay zero,
    then centroid fine-tuning with ``finetune`` (gradients summed per cluster)."""

    kind: Literal["cluster"] = "cluster"
    bits: Bits = 5
    overrides: dict[Pattern, Bits] = Field(default_factory=dict)
    init: Literal["linear", "density", "random"] = "linear"
    finetune: TrainSpec | None = None


class FactorizeStage(StageBase):
    """Compact replacement of the selected layers. ``svd`` / ``tucker2``: low rank, exactly one of
    rank/energy/compression; ``depthwise_separable``: Conv2d -> depthwise (``multiplier``) + pointwise,
    initialised from the kernel; ``grouped_pointwise``: 1x1 Conv2d -> grouped 1x1 (``groups``) + channel
    shuffle; ``hashed``: Linear -> HashedNets weights ``compression`` times fewer."""

    kind: Literal["factorize"] = "factorize"
    method: Literal["svd", "tucker2", "depthwise_separable", "grouped_pointwise", "hashed"] = "svd"
    rank: Annotated[int, Field(ge=1)] | None = None
    energy: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    compression: Annotated[float, Field(ge=1.0, allow_inf_nan=False)] | None = None
    multiplier: Annotated[int, Field(ge=1)] | None = None
    groups: Annotated[int, Field(ge=2)] | None = None
    finetune: TrainSpec | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> FactorizeStage:
        low_rank = (self.rank, self.energy, self.compression)
        if self.method in ("svd", "tucker2"):
            if sum(v is not None for v in low_rank) != 1:
                raise ValueError("rank: give exactly one of rank, energy or compression")
            for key in ("multiplier", "groups"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: not used by method {self.method}")
            return self
        wanted = {"depthwise_separable": "multiplier", "grouped_pointwise": "groups",
                  "hashed": "compression"}[self.method]
        given = {"rank": self.rank, "energy": self.energy, "compression": self.compression,
                 "multiplier": self.multiplier, "groups": self.groups}
        extra = [k for k, v in given.items() if v is not None and k != wanted]
        if extra:
            raise ValueError(f"{extra[0]}: not used by method {self.method} (it takes {wanted})")
        if wanted != "multiplier" and given[wanted] is None:
            raise ValueError(f"{wanted}: method {self.method} needs it")
        return self


class DistillStage(StageBase):
    """Knowledge distillation (Hinton et al. 2015): a new ``student`` (zoo name + args) learns from the
    current model as the teacher; the student replaces the model."""

    kind: Literal["distill"] = "distill"
    student: str
    student_args: dict[str, Any] = Field(default_factory=dict)
    temperature: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 4.0
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    train: TrainSpec = Field(default_factory=TrainSpec)


class FinetuneStage(TrainSpec):
    """Plain training with cross-entropy (masks and shared weights stay in effect). Finetune stages at the
    start of a recipe train the baseline; they are skipped when trained weights are given."""

    name: StageName | None = None
    kind: Literal["finetune"] = "finetune"


class EncodeStage(StageBase):
    """How the artifact stores tensors from here on: Huffman/packed streams, relative-index widths,
    fp16 biases (rounded in memory first, so the reloaded model is exact)."""

    kind: Literal["encode"] = "encode"
    coding: Literal["auto", "packed", "huffman"] = "auto"
    index_bits: IndexBits | None = None
    index_bits_overrides: dict[Pattern, IndexBits] = Field(default_factory=dict)
    sparse: bool = True
    small_dtype: Literal["float32", "float16"] = "float32"
    value_dtype: Literal["float32", "float16"] = "float32"


class ExportStage(StageBase):
    """Write the current model in a deployment format next to the stage artifacts."""

    kind: Literal["export"] = "export"
    format: Literal["onnx", "torchscript", "safetensors", "deepshrink"] = "onnx"
    file: str | None = None


Stage = Annotated[Union[PruneStage, QuantizeStage, ClusterStage, FactorizeStage, DistillStage, FinetuneStage,
                        EncodeStage, ExportStage], Field(discriminator="kind")]


class Recipe(_Frozen):
    """A named, ordered list of stages plus defaults for the model, dataset and seed."""

    name: str = "recipe"
    description: str = ""
    reference: str = ""
    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    seed: Seed = 0
    latency: bool = False
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        seen: set[str] = set()
        for i, name in enumerate(stage_names(self)):
            if name in seen:
                raise ValueError(f"stages: stage {i} repeats the name {name!r}")
            seen.add(name)
        return self


def stage_names(recipe: Recipe) -> list[str]:
    """Each stage's name: its ``name`` or ``<kind>`` (``<kind>-<n>`` when a kind repeats)."""
    counts: dict[str, int] = {}
    for s in recipe.stages:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for s in recipe.stages:
        seen[s.kind] = seen.get(s.kind, 0) + 1
        out.append(s.name or (s.kind if counts[s.kind] == 1 else f"{s.kind}-{seen[s.kind]}"))
    return out


def baseline_stage_count(recipe: Recipe) -> int:
    """How many leading finetune stages train the baseline."""
    n = 0
    for s in recipe.stages:
        if s.kind != "finetune":
            break
        n += 1
    return n
