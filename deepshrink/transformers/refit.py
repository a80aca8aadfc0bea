"""Least-squares refit of the projection after a pruned block, so the narrower block reproduces the original output.

After ``prune_ffn`` removes intermediate neurons (or ``prune_heads`` removes heads), the projection back to the
residual stream (``output.dense``, resp. ``attention.output.dense``) still holds the original columns of what
was kept: the removed part's contribution is simply lost. Given calibration sentences, the kept features
``x`` (the kept neurons' activations, or the kept heads' context vectors; real tokens only) and the original
block's output ``y`` on the same block input (original weights, all neurons or heads), the refit solves, per layer,

    min_{W, b} sum_tokens ||W x + b - y||^2 + ridge * mean(diag(X^T X)) * ||W||^2,

a ridge regression in closed form (normal equations accumulated in float64 over the batches). Layers are
refit in order, each fit on the inputs it will see (those of the already pruned and refit layers before it);
earlier layers' errors are not undone, only not made worse by a fit on inputs that never occur. A removed neuron or head whose output is close to a linear mix of kept ones costs almost
nothing. The same idea as bias/output compensation in structured LLM pruning (FLAP, An et al. 2024; SlimGPT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
# (hook args, hook kwargs, hook output) -> (kept features x, target y), both [..., features]
Pair = Callable[[tuple, dict[str, Any], Any], tuple[torch.Tensor, torch.Tensor]]


class _Stop(Exception):
    """Raised by the hook once a layer's statistics are taken: the layers above need not run."""


def check_refit_inputs(batches: Batches, ridge: float, widest: int, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The calibration batches as a list, after checking ``ridge`` and that the batches hold more real tokens
    than the widest kept projection input (``widest``) has features; called before any pruning happens."""
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence) or not batches:
        raise ConfigError(f"the {what} refit needs a non-empty list of calibration batches (input_ids, attention_mask)")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ConfigError(f"refit ridge must be a number >= 0, got {ridge!r}")
    batches = list(batches)
    tokens = int(sum(int(mask.sum()) for _, mask in batches))
    if tokens <= widest:
        raise ConfigError(f"the {what} refit needs more real calibration tokens than kept features "
                          f"({tokens} <= {widest}): give more calibration sentences")
    return batches


def _eval_copies(originals: Sequence[tuple[nn.Module, nn.Linear]], n_layers: int, what: str) -> None:
    if len(originals) != n_layers:
        raise ModelError(f"refit got the original {what} of {len(originals)} layers, the encoder has {n_layers}")
    for pair in originals:  # targets without dropout, whatever mode the copies were made in
        for module in pair:
            module.eval()


@torch.no_grad()
def refit_ffn_outputs(encoder: nn.Module, batches: Batches, originals: Sequence[tuple[nn.Module, nn.Linear]], *,
                      ridge: float = 1e-4) -> list[float]:
    """Refit every layer's ``output.dense`` in place; ``originals[i]`` = layer i's unpruned
    (``intermediate``, ``output.dense``). Returns per layer the unexplained fraction of the target's variance."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    batches = check_refit_inputs(batches, ridge, max(l.output.dense.in_features for l in layers), "FFN")
    _eval_copies(originals, len(layers), "FFN")

    def pair(inter0: nn.Module, out0: nn.Linear) -> Pair:
        return lambda args, _kw, out: (out, out0(inter0(args[0])))

    return _refit_all(encoder, batches, [(l.intermediate, False, l.output.dense, pair(*o))
                                         for l, o in zip(layers, originals)], float(ridge))


@torch.no_grad()
def refit_attention_outputs(encoder: nn.Module, batches: Batches,
                            originals: Sequence[tuple[nn.Module, nn.Linear]], *, ridge: float = 1e-4) -> list[float]:
    """Refit every layer's ``attention.output.dense`` in place; ``originals[i]`` = layer i's unpruned
    (``attention.self``, ``attention.output.dense``). Returns per layer the unexplained variance fraction."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    batches = check_refit_inputs(batches, ridge, max(l.attention.output.dense.in_features for l in layers),
                                 "attention")
    _eval_copies(originals, len(layers), "attention")

    def first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, tuple) else out

    def pair(self0: nn.Module, dense0: nn.Linear) -> Pair:
        return lambda args, kw, out: (first(out), dense0(first(self0(*args, **kw))))

    return _refit_all(encoder, batches, [(l.attention.self, True, l.attention.output.dense, pair(*o))
                                         for l, o in zip(layers, originals)], float(ridge))


def _refit_all(encoder: nn.Module, batches: Batches, plan: list[tuple[nn.Module, bool, nn.Linear, Pair]],
               ridge: float) -> list[float]:
    was_training = encoder.training
    encoder.eval()
    try:
        return [_refit_one(encoder, batches, *step, ridge) for step in plan]
    finally:
        encoder.train(was_training)


def _refit_one(encoder: nn.Module, batches: Batches, tap: nn.Module, with_kwargs: bool, dense: nn.Linear,
               pair: Pair, ridge: float) -> float:
    """Accumulate the normal equations at ``tap``'s forward over ``batches``, solve, write into ``dense``."""
    if dense.bias is None:
        raise ModelError("the refit needs the projection to have a bias")
    k = dense.in_features
    dev = dense.weight.device
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=dev)
    cross = torch.zeros(k + 1, dense.out_features, dtype=torch.float64, device=dev)
    y_sum = torch.zeros(dense.out_features, dtype=torch.float64, device=dev)
    y_sq = torch.zeros((), dtype=torch.float64, device=dev)
    state: dict[str, torch.Tensor] = {}
    count = 0

    def grab(_m: nn.Module, args: tuple, *rest: Any) -> None:
        nonlocal count
        kwargs, out = (rest[0], rest[1]) if with_kwargs else ({}, rest[0])
        x, y = pair(args, kwargs, out)
        keep = state["mask"].reshape(-1).bool().to(x.device)
        x = x.reshape(-1, x.shape[-1])[keep].double()
        y = y.reshape(-1, y.shape[-1])[keep].double()
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        gram.add_(xa.T @ xa)
        cross.add_(xa.T @ y)
        y_sum.add_(y.sum(0))
        y_sq.add_((y * y).sum())
        count += len(x)
        raise _Stop

    handle = tap.register_forward_hook(grab, with_kwargs=with_kwargs)
    try:
        for ids, mask in batches:
            state["mask"] = mask
            try:
                encoder(ids.to(dev), mask.to(dev))
            except _Stop:
                pass
    finally:
        handle.remove()
    if count == 0:
        raise ModelError(f"the refit saw no activations at {type(tap).__name__}: the encoder never ran it")
    if count <= k:
        raise ConfigError(f"the refit needs more real tokens than kept features ({count} <= {k}): "
                          "give more calibration sentences")
    reg = ridge * gram.diagonal()[:-1].mean()
    eye = torch.eye(k + 1, dtype=gram.dtype, device=dev)
    eye[-1, -1] = 0.0  # the bias is not shrunk
    try:
        solution = torch.linalg.solve(gram + reg * eye, cross)
    except RuntimeError:  # torch.linalg.LinAlgError: a singular system (ridge 0, collinear features)
        raise ModelError("the refit's least-squares system is singular: use ridge > 0 or more calibration "
                         "sentences") from None
    if not torch.isfinite(solution).all():
        raise ModelError("the refit gave non-finite weights; give more calibration sentences or a larger ridge")
    # unexplained variance from the normal equations: sum ||y - X s||^2 = sum y^2 - 2 s.C + s.G s
    sse = y_sq - 2 * (solution * cross).sum() + (solution * (gram @ solution)).sum()
    total = y_sq - (y_sum * y_sum).sum() / count
    dense.weight.copy_(solution[:-1].T.to(dense.weight.dtype))
    dense.bias.copy_(solution[-1].to(dense.bias.dtype))
    return float((sse / total.clamp(min=1e-30)).clamp(min=0.0))


__all__ = ["check_refit_inputs", "refit_attention_outputs", "refit_ffn_outputs"]
