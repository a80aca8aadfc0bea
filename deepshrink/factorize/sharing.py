"""Parameter sharing: cross-layer tying (ALBERT), the hashing trick (HashedNets), one codebook for many layers.

* ``tie_layers``: later layers reuse an earlier layer's module (same parameters, one copy stored).
* ``hash_layer``: a Linear's weight becomes ``sign(i) * buckets[h(i)]`` with a fixed hash of the
  position; only the ``K`` buckets (and the bias) are parameters and stored (the hash is rebuilt
  from the recorded seed).
* ``share_codebook``: one k-means codebook for the weights of several layers; the codebook is a
  single trainable tensor, so fine-tuning keeps the layers on the same values; the artifact stores
  each layer as codebook ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError
from deepshrink.factorize.transforms import OPS, get_module, positive_int, record, rollback_on_error, set_module
from deepshrink.quantize.kmeans import SharedCodebook, kmeans_1d

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class Tied(nn.Module):
    """Calls another module of the same model; holds no parameters of its own (so nothing is stored twice)."""

    def __init__(self, target: nn.Module, source: str) -> None:
        super().__init__()
        object.__setattr__(self, "_target", target)  # deliberately not registered as a submodule
        self.source = source

    @property
    def target(self) -> nn.Module:
        return self._target

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._target(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"tied to {self.source!r}"


def _shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in module.state_dict().items()]


def _build_tie(model: nn.Module, entry: dict[str, Any]) -> Tied:
    name, source = entry["layer"], entry["source"]
    if name == source:
        raise ConfigError(f"layer {name!r} cannot be tied to itself")
    src = get_module(model, source)
    dst = get_module(model, name)
    if isinstance(src, Tied):
        raise ConfigError(f"layer {source!r} is itself tied; tie to {src.source!r} instead")
    if type(dst) is not type(src) or _shapes(dst) != _shapes(src):
        raise ConfigError(f"layer {name!r} ({type(dst).__name__}) cannot be tied to {source!r} "
                          f"({type(src).__name__}): types or parameter shapes differ")
    new = Tied(src, source)
    set_module(model, name, new)
    return new


def tie_layers(model: nn.Module, source: str, targets: Sequence[str]) -> list[Tied]:
    """Make every layer in ``targets`` reuse layer ``source`` (its parameters; their own are dropped).

    Tie after any other substitution of these layers. Recorded for artifact rebuilds.
    """
    if isinstance(targets, str) or not targets:
        raise ConfigError("tie_layers needs a non-empty list of target layer names")
    for t in targets:  # validate every name before changing anything
        get_module(model, t)
    tied = []
    with rollback_on_error(model, list(targets)):  # a later target that does not fit undoes the earlier ties
        for t in targets:
            entry = {"op": "tie", "layer": t, "source": source}
            tied.append(_build_tie(model, entry))
            record(model, entry)
    return tied


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_positions(n: int, buckets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket index, sign) of positions ``0..n-1``: a fixed, platform-independent splitmix64 hash."""
    with np.errstate(over="ignore"):
        pos = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x100000001B3)
        h = _splitmix64(pos)
        s = _splitmix64(h ^ np.uint64(0xD6E8FEB86659FD93))
    idx = (h % np.uint64(buckets)).astype(np.int64)
    sign = np.where((s >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
    return torch.from_numpy(idx), torch.from_numpy(sign)


class HashedLinear(nn.Module):
    """Linear layer whose weight ``W[i] = sign(i) * buckets[h(i)]`` (Chen et al. 2015, HashedNets)."""

    def __init__(self, in_features: int, out_features: int, buckets: int, seed: int = 0, bias: bool = True) -> None:
        super().__init__()
        if buckets < 1 or seed < 0:
            raise ConfigError(f"hashed layer needs buckets >= 1 and seed >= 0, got {buckets}, {seed}")
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        self.buckets = nn.Parameter(torch.zeros(buckets))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        idx, sign = hash_positions(in_features * out_features, buckets, seed)
        self.register_buffer("idx", idx.view(out_features, in_features), persistent=False)
        self.register_buffer("sign", sign.view(out_features, in_features), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.sign * self.buckets[self.idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, buckets={self.buckets.numel()}, seed={self.seed}"


def _build_hash(model: nn.Module, entry: dict[str, Any]) -> HashedLinear:
    name, k = entry["layer"], positive_int(entry, "buckets")
    seed = entry.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ConfigError(f"layer {name!r}: hash seed must be an integer in 0..2^64-1, got {seed!r}")
    old = get_module(model, name)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"layer {name!r} ({type(old).__name__}) cannot be hashed; expected Linear")
    if k > old.weight.numel():
        raise ConfigError(f"layer {name!r}: buckets must be in 1..{old.weight.numel()}, got {k}")
    new = HashedLinear(old.in_features, old.out_features, k, seed, bias=old.bias is not None)
    new.to(old.weight.device, old.weight.dtype)  # a float64 model stays float64
    set_module(model, name, new)
    return new


@torch.no_grad()
def hash_layer(model: nn.Module, name: str, *, buckets: int | None = None, compression: float | None = None,
               seed: int = 0) -> HashedLinear:
    """Replace Linear ``name`` by a HashedLinear with ``buckets`` weights (or ``numel / compression``).

    Buckets start at the least-squares fit of the original weight: the sign-corrected mean of
    the weights hashed into each bucket.
    """
    old = get_module(model, name)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"layer {name!r} ({type(old).__name__}) cannot be hashed; expected Linear")
    n = old.weight.numel()
    if (buckets is None) == (compression is None):
        raise ConfigError(f"layer {name!r}: give exactly one of buckets or compression")
    if compression is not None:
        if not compression >= 1.0:
            raise ConfigError(f"layer {name!r}: compression must be >= 1, got {compression}")
        buckets = max(1, int(n // compression))
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= n:
        raise ConfigError(f"layer {name!r}: buckets must be in 1..{n}, got {buckets!r}")
    entry = {"op": "hash", "layer": name, "buckets": buckets, "seed": seed}
    new = _build_hash(model, entry)
    w = old.weight.detach().flatten().double().cpu()
    idx, sign = new.idx.flatten().cpu(), new.sign.flatten().double().cpu()
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, idx, w * sign)
    counts = torch.bincount(idx, minlength=buckets).clamp_min(1)
    new.buckets.copy_(sums / counts)
    if old.bias is not None:
        new.bias.copy_(old.bias)
    new.train(old.training)
    record(model, entry)
    return new


OPS.add("tie", _build_tie)
OPS.add("hash", _build_hash)


def share_codebook(model: nn.Module, names: Sequence[str], bits: int, *, iters: int = 100) -> nn.Parameter:
    """Cluster the non-zero weights of all ``names`` together into one codebook of 2^bits values.

    Each layer's weight becomes ``codebook[assign]`` (a SharedCodebook parametrization, zeros
    stay zero) and every layer uses the same codebook Parameter, which is returned.
    """
    if not 1 <= bits <= 16:
        raise ConfigError(f"codebook bits must be in 1..16, got {bits}")
    if isinstance(names, str) or len(names) < 1:
        raise ConfigError("share_codebook needs a list of layer names")
    modules = []
    for n in names:
        m = get_module(model, n)
        if not isinstance(m._parameters.get("weight"), torch.Tensor) or parametrize.is_parametrized(m, "weight"):
            raise ConfigError(f"layer {n!r} ({type(m).__name__}) has no plain weight to share")
        modules.append(m)
    if len({id(m) for m in modules}) != len(modules):
        raise ConfigError("share_codebook: a layer is listed twice")
    flats = [m.weight.detach().flatten().cpu().double().numpy() for m in modules]
    values = np.concatenate([f[f != 0] for f in flats])
    centroids, _ = kmeans_1d(values, 2**bits, iters=iters)
    k = max(1, centroids.size)
    codebook = torch.tensor(centroids if centroids.size else np.zeros(1), dtype=torch.float32)
    mids = (centroids[1:] + centroids[:-1]) / 2
    shared: nn.Parameter | None = None
    for m, flat in zip(modules, flats):
        assign = np.clip(np.searchsorted(mids, flat, side="right"), 0, k - 1)
        assign[flat == 0] = k
        param = SharedCodebook(torch.from_numpy(assign).view(m.weight.shape).to(m.weight.device),
                               codebook.to(m.weight.device))
        parametrize.register_parametrization(m, "weight", param, unsafe=True)
        plist = m.parametrizations["weight"]
        if shared is None:
            shared = plist.original
        else:
            plist.original = shared
    return cast(nn.Parameter, shared)  # names is non-empty (checked above)
