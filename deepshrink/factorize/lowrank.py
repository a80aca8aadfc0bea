"""Low-rank factorization of Linear and Conv2d layers: truncated SVD and Tucker-2.

* Linear ``W (out x in) ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)``: two thinner Linear layers.
* Conv2d, SVD of ``W`` reshaped to ``out x (in k k)``: a k x k conv with ``r`` filters, then a
  1x1 conv ``r -> out`` carrying the bias.
* Conv2d, Tucker-2 (HOSVD init): 1x1 ``in -> r_in``, k x k ``r_in -> r_out``, 1x1 ``r_out -> out``.

The rank is explicit (``rank``), chosen by retained energy (``energy``: the fraction of
``sum s_i^2`` kept) or by a parameter budget (``compression``: the layer ends up with at least
that many times fewer parameters, bias included). For SVD the MACs shrink by the same factor as
the weights. Substituted layers are ``nn.Sequential`` so their state-dict names stay plain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.factorize.blocks import PointwiseConv2d
from deepshrink.factorize.transforms import (
    OPS, get_module, positive_int, record, rollback_on_error, set_module, svd,
)

Method = Literal["svd", "tucker2"]


@dataclass(frozen=True)
class FactorSpec:
    """How to factorize one layer: exactly one of ``rank``, ``energy`` or ``compression``.

    For Tucker-2 ``rank`` may be a pair ``(r_out, r_in)``; ``energy`` applies to each mode.
    """

    method: Method = "svd"
    rank: int | tuple[int, int] | None = None
    energy: float | None = None
    compression: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("svd", "tucker2"):
            raise ConfigError(f"factorization method must be svd or tucker2, got {self.method!r}")
        given = [v is not None for v in (self.rank, self.energy, self.compression)]
        if sum(given) != 1:
            raise ConfigError("give exactly one of rank, energy or compression")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"retained energy must be in (0, 1], got {self.energy}")
        if self.compression is not None and not (self.compression >= 1.0 and math.isfinite(self.compression)):
            raise ConfigError(f"compression must be a finite number >= 1, got {self.compression}")


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with ``sum(s[:r]^2) >= energy * sum(s^2)`` (s sorted descending); at least 1."""
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"retained energy must be in (0, 1], got {energy}")
    s2 = singular_values.detach().double().flatten() ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(s2, 0) / total
    # a small tolerance so energy=1.0 does not demand rank beyond round-off
    return min(int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype))) + 1, s2.numel())


def _check_rank(name: str, rank: object, max_rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"layer {name!r}: rank must be an integer, got {rank!r}")
    if not 1 <= rank <= max_rank:
        raise ConfigError(f"layer {name!r}: rank {rank} is out of range 1..{max_rank}")
    return rank


def _svd_matrix(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach().double()
    return w.reshape(w.shape[0], -1)


def _svd_params(module: nn.Module, rank: int) -> int:
    out, fan_in = _svd_matrix(module).shape
    return rank * (out + fan_in) + (out if module.bias is not None else 0)


def _layer_params(module: nn.Module) -> int:
    return sum(p.numel() for p in (module.weight, module.bias) if p is not None)


def _check_layer(name: str, module: nn.Module, method: Method) -> None:
    if method == "svd" and isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ConfigError(f"layer {name!r}: grouped Conv2d (groups={module.groups}) cannot be factorized")
        return
    kind = "Conv2d" if method == "tucker2" else "Linear or Conv2d"
    raise ConfigError(f"layer {name!r} ({type(module).__name__}) cannot be factorized by {method}; "
                      f"expected {kind}")


def choose_svd_rank(name: str, module: nn.Module, spec: FactorSpec) -> int:
    """The SVD rank ``spec`` asks for on ``module`` (explicit, by energy or by parameter budget)."""
    mat = _svd_matrix(module)
    max_rank = min(mat.shape)
    if spec.rank is not None:
        return _check_rank(name, spec.rank, max_rank)
    if spec.energy is not None:
        return rank_for_energy(svd(mat, values_only=True), spec.energy)
    budget = _layer_params(module) / float(spec.compression)  # type: ignore[arg-type]
    bias = module.bias.numel() if module.bias is not None else 0
    rank = int((budget - bias) // sum(mat.shape))
    if rank < 1:
        raise ConfigError(f"layer {name!r}: compression {spec.compression} leaves no room for rank 1")
    return min(rank, max_rank)


def _tucker_unfoldings(module: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = module.weight.detach().double()
    return w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)


def _tucker_params(module: nn.Conv2d, r_out: int, r_in: int) -> int:
    out, cin, kh, kw = module.weight.shape
    return cin * r_in + r_in * r_out * kh * kw + r_out * out + (out if module.bias is not None else 0)


def choose_tucker_ranks(name: str, module: nn.Conv2d, spec: FactorSpec) -> tuple[int, int]:
    """(r_out, r_in) for Tucker-2: explicit, per-mode energy, or the largest equal-fraction ranks in budget."""
    out, cin = module.weight.shape[:2]
    if spec.rank is not None:
        ranks = spec.rank if isinstance(spec.rank, (tuple, list)) else (spec.rank, spec.rank)
        if len(ranks) != 2:
            raise ConfigError(f"layer {name!r}: Tucker-2 rank must be an int or (r_out, r_in)")
        k = module.weight.shape[2] * module.weight.shape[3]  # unfolding ranks: min(o, c k^2) and min(c, o k^2)
        return _check_rank(name, ranks[0], min(out, cin * k)), _check_rank(name, ranks[1], min(cin, out * k))
    m_out, m_in = _tucker_unfoldings(module)
    if spec.energy is not None:
        return (rank_for_energy(svd(m_out, values_only=True), spec.energy),
                rank_for_energy(svd(m_in, values_only=True), spec.energy))
    budget = _layer_params(module) / float(spec.compression)  # type: ignore[arg-type]
    best: tuple[int, int] | None = None
    for r_out in range(1, out + 1):  # keep r_in / cin ~ r_out / out; take the largest that fits
        r_in = max(1, min(cin, round(r_out * cin / out)))
        if _tucker_params(module, r_out, r_in) <= budget:
            best = (r_out, r_in)
    if best is None:
        raise ConfigError(f"layer {name!r}: compression {spec.compression} leaves no room for ranks (1, 1)")
    return best


def _conv_kwargs(conv: nn.Conv2d) -> dict[str, Any]:
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
            "padding_mode": conv.padding_mode}


def _build_svd(model: nn.Module, entry: dict[str, Any]) -> nn.Sequential:
    name, rank = entry["layer"], positive_int(entry, "rank")
    module = get_module(model, name)
    _check_layer(name, module, "svd")
    _check_rank(name, rank, min(_svd_matrix(module).shape))
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = nn.Sequential(nn.Linear(module.in_features, rank, bias=False),
                            nn.Linear(rank, module.out_features, bias=bias))
    else:
        new = nn.Sequential(
            nn.Conv2d(module.in_channels, rank, module.kernel_size, bias=False, **_conv_kwargs(module)),
            PointwiseConv2d(rank, module.out_channels, bias=bias))
    new.to(module.weight.device, module.weight.dtype)
    set_module(model, name, new)
    return new


def _build_tucker2(model: nn.Module, entry: dict[str, Any]) -> nn.Sequential:
    name = entry["layer"]
    r_out, r_in = positive_int(entry, "rank_out"), positive_int(entry, "rank_in")
    module = get_module(model, name)
    _check_layer(name, module, "tucker2")
    k = module.weight.shape[2] * module.weight.shape[3]
    _check_rank(name, r_out, min(module.out_channels, module.in_channels * k))
    _check_rank(name, r_in, min(module.in_channels, module.out_channels * k))
    new = nn.Sequential(
        PointwiseConv2d(module.in_channels, r_in, bias=False),
        nn.Conv2d(r_in, r_out, module.kernel_size, bias=False, **_conv_kwargs(module)),
        PointwiseConv2d(r_out, module.out_channels, bias=module.bias is not None))
    new.to(module.weight.device, module.weight.dtype)
    set_module(model, name, new)
    return new


OPS.add("svd", _build_svd)
OPS.add("tucker2", _build_tucker2)


@torch.no_grad()
def _init_svd(old: nn.Module, new: nn.Sequential, rank: int) -> None:
    u, s, vh = svd(_svd_matrix(old))
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).reshape(new[0].weight.shape)
    second = (u[:, :rank] * root[None, :]).reshape(new[1].weight.shape)
    new[0].weight.copy_(first)
    new[1].weight.copy_(second)
    if old.bias is not None:
        new[1].bias.copy_(old.bias)


@torch.no_grad()
def _init_tucker2(old: nn.Conv2d, new: nn.Sequential, r_out: int, r_in: int) -> None:
    m_out, m_in = _tucker_unfoldings(old)
    u_out = svd(m_out)[0][:, :r_out]  # out x r_out
    u_in = svd(m_in)[0][:, :r_in]  # in x r_in
    core = torch.einsum("oikl,or,is->rskl", old.weight.detach().double(), u_out, u_in)
    new[0].weight.copy_(u_in.T[:, :, None, None])
    new[1].weight.copy_(core)
    new[2].weight.copy_(u_out[:, :, None, None])
    if old.bias is not None:
        new[2].bias.copy_(old.bias)


def factorize_layer(model: nn.Module, name: str, spec: FactorSpec | None = None, **kwargs: Any) -> nn.Sequential:
    """Replace layer ``name`` of ``model`` by its low-rank factorization (in place) and return the new block.

    ``spec`` or keyword arguments of ``FactorSpec`` (``method``, ``rank``, ``energy``,
    ``compression``). The substitution is recorded so an artifact of ``model`` rebuilds it.
    """
    spec = spec if spec is not None else FactorSpec(**kwargs)
    old = get_module(model, name)
    _check_layer(name, old, spec.method)
    if isinstance(old.weight, nn.parameter.UninitializedTensorMixin):
        raise ConfigError(f"layer {name!r}: a lazy layer without its shape yet; run one forward pass first")
    if not bool(torch.isfinite(old.weight).all()):
        raise ConfigError(f"layer {name!r}: weights contain NaN or inf")
    try:  # the layer is replaced only once its factors are computed: a failure leaves the model as it was
        if spec.method == "svd":
            rank = choose_svd_rank(name, old, spec)
            entry: dict[str, Any] = {"op": "svd", "layer": name, "rank": rank}
            new = _build_svd(model, entry)
            _init_svd(old, new, rank)
        else:
            r_out, r_in = choose_tucker_ranks(name, old, spec)  # type: ignore[arg-type]
            entry = {"op": "tucker2", "layer": name, "rank_out": r_out, "rank_in": r_in}
            new = _build_tucker2(model, entry)
            _init_tucker2(old, new, r_out, r_in)  # type: ignore[arg-type]
    except BaseException as exc:
        if get_module(model, name) is not old:
            set_module(model, name, old)
        if isinstance(exc, (RuntimeError, ValueError)) and not isinstance(exc, ConfigError):
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"layer {name!r}: cannot factorize: {reason}") from None
        raise
    new.train(old.training)
    record(model, entry)
    return new


def factorize(model: nn.Module, plan: dict[str, FactorSpec]) -> dict[str, nn.Sequential]:
    """Factorize several layers: ``{"fc1": FactorSpec(compression=4), ...}``; returns the new blocks."""
    for name in plan:
        get_module(model, name)  # every name must exist before anything changes
    with rollback_on_error(model, list(plan)):  # a later layer's bad rank leaves the earlier ones unchanged
        return {name: factorize_layer(model, name, spec) for name, spec in plan.items()}


def svd_params(module: nn.Module, rank: int) -> int:
    """Parameters (bias included) of the SVD factorization of a Linear/Conv2d ``module`` at ``rank``."""
    return _svd_params(module, rank)
