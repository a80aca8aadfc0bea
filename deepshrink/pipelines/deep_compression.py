"""Deep Compression (Han, Mao, Dally, ICLR 2016): prune, share weights by k-means, Huffman-code.

Layer by layer as the paper describes: magnitude pruning with iterative prune/retrain at a
reduced learning rate (masks kept during retraining), k-means weight sharing with linear
initialisation and centroid fine-tuning, then relative-index + codebook storage with Huffman
coding in a pickle-free artifact. Every size reported is the size of a real file.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from deepshrink.artifact import SaveReport, StoragePolicy, load, save
from deepshrink.artifact.model_io import round_small_tensors
from deepshrink.core.errors import ConfigError
from deepshrink.core.fileio import ensure_dir
from deepshrink.measure.accuracy import evaluate
from deepshrink.measure.count import count_nonzeros, count_params
from deepshrink.measure.flops import count_macs
from deepshrink.models.zoo import arch_record, user_model_name
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import check_keep, prune_layer
from deepshrink.quantize.kmeans import remove_sharing, share_weights
from deepshrink.train import TrainConfig, Trainer


@dataclass(frozen=True)
class LayerSetting:
    """Per-layer plan: fraction of weights kept, weight bits (codebook of 2^bits), index bits (None = best)."""

    keep: float
    bits: int
    index_bits: int | None = None

    def __post_init__(self) -> None:
        check_keep(self.keep, "deep compression layer")
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"deep compression: weight bits must be in 1..8, got {self.bits}")
        if self.index_bits is not None and not 1 <= self.index_bits <= 16:
            raise ConfigError(f"deep compression: index bits must be in 1..16, got {self.index_bits}")


@dataclass(frozen=True)
class DeepCompressionConfig:
    """The whole pipeline; ``layers`` maps module names to their settings."""

    layers: Mapping[str, LayerSetting]
    prune_rounds: int = 3
    retrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=1e-3, optimizer="adam"))
    cluster_finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-4,
                                                                              optimizer="adam"))
    bias_dtype: Literal["float32", "float16"] = "float32"
    kmeans_init: Literal["linear", "density", "random"] = "linear"

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("deep compression: no layers given")
        if self.prune_rounds < 1:
            raise ConfigError(f"deep compression: prune_rounds must be >= 1, got {self.prune_rounds}")
        if self.bias_dtype not in ("float32", "float16"):
            raise ConfigError(f"deep compression: bias_dtype must be float32 or float16, got {self.bias_dtype!r}")


@dataclass
class StageResult:
    name: str
    accuracy: float
    loss: float
    artifact_bytes: int
    artifact: str
    params: int
    nonzeros: int
    macs: int
    save_report: SaveReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy, "loss": self.loss,
                "artifact_bytes": self.artifact_bytes, "artifact": self.artifact, "params": self.params,
                "nonzeros": self.nonzeros, "macs": self.macs}


@dataclass
class DeepCompressionResult:
    model: nn.Module
    baseline: StageResult
    stages: list[StageResult]
    fp32_bytes: int
    roundtrip_max_abs_diff: float
    weights_before: dict[str, torch.Tensor]
    weights_after: dict[str, torch.Tensor]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    @property
    def compression_ratio(self) -> float:
        return self.fp32_bytes / self.final.artifact_bytes


def resolve_layers(model: nn.Module, layers: Mapping[str, LayerSetting]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out = {}
    for name in layers:
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            choices = [n for n, m in modules.items() if isinstance(getattr(m, "weight", None), torch.Tensor)]
            raise ConfigError(f"deep compression: no weight layer named {name!r}; layers are {choices}")
        out[name] = module
    return out


class DeepCompression:
    """Runs the three stages on a trained model, writing one artifact per stage into ``out_dir``."""

    def __init__(self, config: DeepCompressionConfig, *, progress: bool | None = None) -> None:
        self.cfg = config
        self.progress = progress

    def run(self, model: nn.Module, train: Dataset, test: Dataset, example: torch.Tensor,
            out_dir: str | os.PathLike[str], tag: str = "model") -> DeepCompressionResult:
        cfg = self.cfg
        out = ensure_dir(out_dir)
        model = copy.deepcopy(model).cpu()
        template = copy.deepcopy(model)  # a fresh instance to load a model of the user's own into
        layers = resolve_layers(model, cfg.layers)
        params = count_params(model)  # the architecture is unchanged; sharing only ties values
        fp32_bytes = 4 * params
        weights_before = {n: m.weight.detach().clone() for n, m in layers.items()}

        def stage(name: str, policy: StoragePolicy) -> StageResult:
            path = out / f"{tag}.{name}.dsk"
            report = save(model, path, policy, info={"stage": name, "pipeline": "deep_compression"})
            ev = evaluate(model, test)
            return StageResult(name, ev.accuracy, ev.loss, report.nbytes, str(path), params,
                               count_nonzeros(model), count_macs(model, example), report)

        baseline = stage("baseline", StoragePolicy(sparse=False, coding="packed"))
        stages = []

        # Stage 1: iterative magnitude pruning, each round retrained with the masks in place.
        for r in range(1, cfg.prune_rounds + 1):
            for name, module in layers.items():
                keep = cfg.layers[name].keep
                prune_layer(module, keep ** (r / cfg.prune_rounds))
            Trainer(model, cfg.retrain.replace(seed=cfg.retrain.seed + r), progress=self.progress,
                    description=f"{tag} prune {r}/{cfg.prune_rounds}").fit(train)
        remove_masks(model)
        index_bits = {f"{n}.weight": s.index_bits for n, s in cfg.layers.items() if s.index_bits is not None}
        stages.append(stage("pruned", StoragePolicy(coding="packed", layer_index_bits=index_bits)))

        # Stage 2: k-means weight sharing, then centroid fine-tuning (gradients summed per cluster).
        for name, module in layers.items():
            share_weights(module, cfg.layers[name].bits, init=cfg.kmeans_init)
        Trainer(model, cfg.cluster_finetune, progress=self.progress,
                description=f"{tag} centroids").fit(train)
        if cfg.bias_dtype == "float16":
            round_small_tensors(model)
        small = cfg.bias_dtype
        stages.append(stage("quantized", StoragePolicy(coding="packed", layer_index_bits=index_bits,
                                                       small_dtype=small)))

        # Stage 3: Huffman coding of both streams (the smaller of packed/Huffman per stream).
        stages.append(stage("huffman", StoragePolicy(coding="auto", layer_index_bits=index_bits,
                                                     small_dtype=small)))

        own = user_model_name(arch_record(template)) is not None  # the loader never imports a user's code
        loaded = load(stages[-1].artifact, model=template if own else None)
        diff = _max_output_diff(model, loaded, test)
        weights_after = {n: m.weight.detach().clone() for n, m in layers.items()}
        remove_sharing(model)
        return DeepCompressionResult(model.eval(), baseline, stages, fp32_bytes, diff, weights_before,
                                     weights_after)


@torch.inference_mode()
def _max_output_diff(a: nn.Module, b: nn.Module, data: Dataset, n: int = 512) -> float:
    a.eval()
    b.eval()
    x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
    ya, yb = a(x), b(x)
    same = (ya == yb) | (torch.isnan(ya) & torch.isnan(yb))  # equal infinities and NaN on both sides agree
    d = float(torch.where(same, torch.zeros_like(ya), (ya - yb).abs()).max()) if ya.numel() else 0.0
    return math.inf if math.isnan(d) else d  # NaN on one side only: no round trip
