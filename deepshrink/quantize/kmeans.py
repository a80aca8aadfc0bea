"""Weight sharing by k-means (Deep Compression stage 2): a per-layer codebook of 2^bits values.

The layer's weight becomes ``codebook[assignment]``; pruned positions point at a constant zero
slot, so they stay zero. The codebook is the trainable tensor, so autograd sums the gradients of
all weights of a cluster into its centroid: exactly the paper's centroid fine-tuning.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepshrink.core.errors import ConfigError

Init = Literal["linear", "density", "random"]


def kmeans_1d(values: np.ndarray, k: int, *, init: Init = "linear", iters: int = 100,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars; returns (centroids sorted ascending as float64, assignments).

    Linear initialisation spaces the centroids evenly between min and max, which the paper
    found best because it keeps the rare large weights represented.
    """
    if k < 1:
        raise ConfigError(f"k-means needs k >= 1, got {k}")
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if not np.all(np.isfinite(v)):
        raise ConfigError("k-means: the weights contain NaN or inf")
    uniq = np.unique(v)
    if uniq.size <= k:
        return uniq, np.searchsorted(uniq, v)
    if init == "linear":
        c = np.linspace(v.min(), v.max(), k)
    elif init == "density":
        c = np.quantile(v, (np.arange(k) + 0.5) / k)
    elif init == "random":
        c = np.sort(np.random.default_rng(seed).choice(uniq, size=k, replace=False))
    else:
        raise ConfigError(f"k-means init must be linear, density or random, got {init!r}")
    order = np.argsort(v, kind="stable")
    sv = v[order]
    csum = np.concatenate([[0.0], np.cumsum(sv)])
    for _ in range(iters):
        # In 1-D each cluster is a contiguous run of sorted values between centroid midpoints.
        bounds = np.searchsorted(sv, (c[1:] + c[:-1]) / 2, side="right")
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [sv.size]])
        counts = ends - starts
        sums = csum[ends] - csum[starts]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = np.sort(new)
        if np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    assign = np.clip(np.searchsorted((c[1:] + c[:-1]) / 2, v, side="right"), 0, k - 1)
    return c, assign


class SharedCodebook(nn.Module):
    """Parametrization ``codebook -> weight``: weight[i] = codebook[assign[i]], zero where assign == k."""

    def __init__(self, assign: torch.Tensor, codebook: torch.Tensor) -> None:
        super().__init__()
        self.k = int(codebook.numel())
        self.register_buffer("assign", assign.to(torch.int64))
        self.register_buffer("initial", codebook.detach().clone().to(torch.float32))

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        table = torch.cat([codebook, codebook.new_zeros(1)])
        return table[self.assign]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.initial.to(weight.device, weight.dtype).clone()


def share_weights(module: nn.Module, bits: int, *, name: str = "weight", init: Init = "linear",
                  iters: int = 100) -> SharedCodebook:
    """Cluster the non-zero weights of ``module.name`` into 2^bits shared values (zeros stay zero)."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"weight sharing bits must be in 1..16, got {bits}")
    if parametrize.is_parametrized(module, name):
        raise ConfigError(f"{name} of {type(module).__name__} already has a parametrization; "
                          "make masks permanent before sharing weights")
    weight = getattr(module, name).detach()
    flat = weight.flatten().cpu().double().numpy()
    nz = np.flatnonzero(flat)
    centroids, assign_nz = kmeans_1d(flat[nz], 2**bits, init=init, iters=iters)
    k = max(1, centroids.size)
    assign = np.full(flat.size, k, dtype=np.int64)
    assign[nz] = assign_nz
    codebook = torch.tensor(centroids if centroids.size else np.zeros(1), dtype=torch.float32)
    param = SharedCodebook(torch.from_numpy(assign).view(weight.shape).to(weight.device), codebook)
    parametrize.register_parametrization(module, name, param, unsafe=True)
    return param


def shared_codebook(module: nn.Module, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor] | None:
    """(codebook, assignment) of a shared weight, or None when the weight is not shared."""
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    if len(plist) != 1 or not isinstance(plist[0], SharedCodebook):
        return None
    return plist.original.detach(), plist[0].assign


def remove_sharing(model: nn.Module) -> None:
    """Bake shared weights into plain tensors (values stay the codebook values)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if shared_codebook(module, name) is not None:
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
