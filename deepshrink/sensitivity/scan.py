"""Per-layer accuracy versus kept fraction, versus k-means weight bits and (optionally) versus rank."""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ArtifactError, ConfigError, ModelError
from deepshrink.core.fileio import atomic_write_bytes, atomic_write_text, ensure_dir
from deepshrink.core.progress import track
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import magnitude_mask
from deepshrink.quantize.kmeans import kmeans_1d

Score = Callable[[nn.Module], float]
DEFAULT_KEEPS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.035, 0.025, 0.015, 0.01)
DEFAULT_BITS: tuple[int, ...] = (8, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class LayerCurves:
    """Scores of the model with only this layer compressed, one per tried setting (higher is better)."""

    name: str
    type: str
    numel: int
    keeps: tuple[float, ...]
    keep_scores: tuple[float, ...]
    bits: tuple[int, ...]
    bit_scores: tuple[float, ...]
    ranks: tuple[int, ...] = ()
    rank_scores: tuple[float, ...] = ()

    def drop_at_keep(self, baseline: float, keep: float) -> float:
        """Score lost when keeping ``keep`` of the weights: linear in log(keep), never less than at larger keeps."""
        return _monotone_drop(baseline, self.keeps, self.keep_scores, keep, log=True)

    def drop_at_bits(self, baseline: float, bits: int) -> float:
        """Score lost with ``bits``-bit shared weights (interpolated, monotone in bits)."""
        return _monotone_drop(baseline, self.bits, self.bit_scores, bits, log=False)


def _monotone_drop(baseline: float, xs: Sequence[float], scores: Sequence[float], x: float, *, log: bool) -> float:
    """Interpolated drop at ``x``; drops are made non-increasing in x (less compression never hurts more)."""
    if not xs:
        return 0.0
    order = np.argsort(np.asarray(xs, dtype=np.float64))[::-1]  # most kept / most bits first
    px = np.asarray(xs, dtype=np.float64)[order]
    drops = np.maximum.accumulate(np.maximum(0.0, baseline - np.asarray(scores, dtype=np.float64)[order]))
    tx = np.log(px) if log else px
    q = math.log(x) if log else float(x)
    if q >= tx[0]:
        return 0.0 if q > tx[0] else float(drops[0])
    if q <= tx[-1]:
        return float(drops[-1])
    return float(np.interp(q, tx[::-1], drops[::-1]))


@dataclass(frozen=True)
class SensitivityResult:
    """The unmodified model's score and each layer's curves; JSON round-trips through to_dict/from_dict."""

    baseline: float
    layers: dict[str, LayerCurves] = field(default_factory=dict)
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline,
                "layers": {n: {k: list(v) if isinstance(v, tuple) else v for k, v in c.__dict__.items()}
                           for n, c in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityResult:
        try:
            layers = {n: LayerCurves(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                      for n, c in data["layers"].items()}
            return cls(float(data["baseline"]), layers, str(data.get("metric", "accuracy")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"sensitivity data is malformed: {exc}") from None


def weight_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Modules with a weight of two or more dimensions (Linear, Conv), or exactly the ``layers`` named."""
    modules = dict(model.named_modules())
    found = {n: m for n, m in modules.items()
             if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2}
    if layers is None:
        return found
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise ConfigError(f"sensitivity: no weight layer named {', '.join(map(repr, unknown))}; "
                          f"layers are {sorted(found)}")
    return {n: found[n] for n in layers}


def check_grid(name: str, values: Sequence[float], lo: float, hi: float, *, integer: bool = False) -> None:
    """ConfigError unless ``values`` is a list of numbers in [lo, hi] (integers when ``integer``)."""
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"sensitivity: the {name}s must be a list of numbers, got {values!r}")
    try:
        values = list(values)  # lists, tuples, numpy arrays
    except TypeError:
        raise ConfigError(f"sensitivity: the {name}s must be a list of numbers, got {values!r}") from None
    kind = numbers.Integral if integer else numbers.Real
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kind) or math.isnan(float(v)) or not lo <= v <= hi:
            raise ConfigError(f"sensitivity: every {name} must be {'an integer ' if integer else ''}in "
                              f"[{lo}, {hi}], got {v!r}")


def check_settings(model: nn.Module, *, layers: Sequence[str] | None = None,
                   keeps: Sequence[float] = DEFAULT_KEEPS, bits: Sequence[int] = DEFAULT_BITS,
                   ranks: Sequence[int] = ()) -> dict[str, nn.Module]:
    """Check a scan's settings against ``model`` (trained or not: only names and shapes matter) and return the
    layers it scans; ConfigError naming the bad value. ``scan`` calls it; the CLI calls it before training."""
    check_grid("kept fraction", keeps, 1e-6, 1.0)
    check_grid("bit width", bits, 1, 16, integer=True)
    if any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1 for r in ranks):
        raise ConfigError(f"sensitivity: ranks must be positive integers, got {list(ranks)}")
    if not (len(keeps) or len(bits) or len(ranks)):
        raise ConfigError("sensitivity: nothing to scan: give kept fractions, bit widths or ranks")
    chosen = weight_layers(model, layers)
    if ranks:
        linears = {n: min(m.weight.shape) for n, m in chosen.items() if isinstance(m, nn.Linear)}
        if not linears:
            raise ConfigError("sensitivity: ranks apply to Linear layers and none is scanned")
        useless = [r for r in ranks if all(r >= k for k in linears.values())]
        if useless:
            raise ConfigError(f"sensitivity: ranks {useless} are not below the smaller side of any scanned Linear "
                              f"layer ({', '.join(f'{n}: {k}' for n, k in linears.items())}): nothing to factorize")
    return chosen


def _shared(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The weight with its non-zeros replaced by their k-means centroid (2^bits shared values)."""
    flat = weight.detach().flatten().cpu().numpy().astype(np.float64)
    nz = np.flatnonzero(flat)
    if nz.size:
        centroids, assign = kmeans_1d(flat[nz], 2**bits, init="linear", iters=50)
        flat[nz] = centroids[assign]
    return torch.from_numpy(flat).to(weight.dtype).view_as(weight).to(weight.device)


def scan(model: nn.Module, score: Score, *, layers: Sequence[str] | None = None,
         keeps: Sequence[float] = DEFAULT_KEEPS, bits: Sequence[int] = DEFAULT_BITS, ranks: Sequence[int] = (),
         progress: bool | None = None) -> SensitivityResult:
    """Compress one layer at a time (on a copy, restored after each try) and score the model.

    ``score`` maps a model to a number, higher is better (e.g. validation accuracy in 0..1).
    Pruning keeps the ``keep`` largest-magnitude weights of the layer; bits share its non-zero
    weights in 2^bits k-means values; ranks (Linear layers only) reuse the factorization scan.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"sensitivity: expected a torch.nn.Module, got {type(model).__name__}")
    work = copy.deepcopy(model)
    remove_masks(work)
    chosen = check_settings(work, layers=layers, keeps=keeps, bits=bits, ranks=ranks)
    busy = [n for n, m in chosen.items() if parametrize.is_parametrized(m, "weight")]
    if busy:
        raise ConfigError(f"sensitivity: layers {busy} are shared or quantized already; scan the float model")
    baseline = float(score(work))
    keeps, bits = sorted(set(keeps), reverse=True), sorted({int(b) for b in bits}, reverse=True)
    curves: dict[str, LayerCurves] = {}
    for name in track(list(chosen), "sensitivity scan", total=len(chosen), enabled=progress):
        module = chosen[name]
        original = module.weight.detach().clone()
        keep_scores, bit_scores = [], []
        with torch.no_grad():
            for keep in keeps:
                module.weight.copy_(original * magnitude_mask(original, keep))
                keep_scores.append(float(score(work)))
            for b in bits:
                module.weight.copy_(_shared(original, b))
                bit_scores.append(float(score(work)))
            module.weight.copy_(original)
        rank_list: tuple[int, ...] = ()
        rank_scores: tuple[float, ...] = ()
        if ranks and isinstance(module, nn.Linear):
            from deepshrink.factorize.sensitivity import sensitivity_scan as rank_scan

            usable = [r for r in ranks if r < min(module.weight.shape)]
            if usable:
                res = rank_scan(work, name, usable, score)
                rank_list, rank_scores = tuple(res.scores), tuple(res.scores.values())
        curves[name] = LayerCurves(name, type(module).__name__, original.numel(), tuple(keeps),
                                   tuple(keep_scores), tuple(bits), tuple(bit_scores), rank_list, rank_scores)
    return SensitivityResult(baseline, curves)


def load_sensitivity(path: str | os.PathLike[str]) -> SensitivityResult:
    """Read sensitivity.json written by :func:`write_sensitivity`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read sensitivity data {os.fspath(path)}: {exc}") from None
    return SensitivityResult.from_dict(data)


def render_markdown(result: SensitivityResult, title: str) -> str:
    """Two tables (score % per layer and kept fraction / bits), plus ranks when scanned."""
    from deepshrink.report.tables import markdown_table

    lines = [f"# Sensitivity: {title}", "",
             f"Score of the unmodified model: {100 * result.baseline:.2f}%. Each cell is the score (%) with "
             "only that layer compressed, no retraining.", ""]
    curves = list(result.layers.values())
    if curves:
        keeps = curves[0].keeps
        lines += ["## Kept fraction (magnitude pruning)", "",
                  markdown_table(["layer", "weights", *[f"keep {k:g}" for k in keeps]],
                                 [[c.name, c.numel, *[100 * s for s in c.keep_scores]] for c in curves]), ""]
        bits = curves[0].bits
        lines += ["## Weight bits (k-means sharing)", "",
                  markdown_table(["layer", "weights", *[f"{b} bits" for b in bits]],
                                 [[c.name, c.numel, *[100 * s for s in c.bit_scores]] for c in curves]), ""]
        for c in curves:
            if c.ranks:
                lines += [f"Rank of {c.name}: " + ", ".join(f"r={r}: {100 * s:.2f}%"
                                                           for r, s in zip(c.ranks, c.rank_scores)), ""]
    lines += ["![sensitivity](sensitivity.png)", ""]
    return "\n".join(lines)


def write_sensitivity(result: SensitivityResult, out_dir: str | os.PathLike[str], title: str = "model"
                      ) -> dict[str, Path]:
    """Write sensitivity.json, sensitivity.md and sensitivity.png into ``out_dir`` (atomically)."""
    from deepshrink.sensitivity.plots import plot_sensitivity

    out = ensure_dir(out_dir)
    paths = {"json": out / "sensitivity.json", "md": out / "sensitivity.md", "png": out / "sensitivity.png"}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2))
    atomic_write_bytes(paths["png"], plot_sensitivity(result, title))
    atomic_write_text(paths["md"], render_markdown(result, title))
    return paths
