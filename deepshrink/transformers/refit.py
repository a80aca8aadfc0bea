"""Least-squares refit of a pruned FFN's down-projection, so the narrower layer reproduces the original output.

After ``prune_ffn`` removes intermediate neurons, ``output.dense`` still holds the original columns of the
kept neurons: the removed neurons' contribution is simply lost. Given calibration sentences, the kept
neurons' activations ``h`` (real tokens only) and the original FFN output ``y = W2 gelu(W1 a) + b2`` on the
same FFN input ``a``, the refit solves, per layer,

    min_{W, b} sum_tokens ||W h + b - y||^2 + ridge * mean(diag(H^T H)) * ||[W b]||^2,

a ridge regression in closed form (normal equations accumulated in float64 over the batches). Layers are
refit in order, each on the inputs produced by the already pruned and refit layers before it, so errors do
not compound. Removed neurons whose activation is a near-linear mix of kept ones cost almost nothing.
The same idea as bias/output compensation in structured pruning (e.g. FLAP, An et al. 2024; SlimGPT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class _Stop(Exception):
    """Raised by the hook once a layer's FFN statistics are taken: the layers above need not run."""


@torch.no_grad()
def refit_ffn_outputs(encoder: nn.Module, batches: Batches, originals: Sequence[tuple[nn.Module, nn.Linear]], *,
                      ridge: float = 1e-4) -> list[float]:
    """Refit every layer's ``output.dense`` in place; ``originals[i]`` = layer i's unpruned
    (``intermediate``, ``output.dense``). Returns per layer the unexplained fraction of the target's variance."""
    from deepshrink.transformers.model import bert_layers

    if not batches:
        raise ConfigError("the FFN refit needs calibration batches (input_ids, attention_mask)")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ConfigError(f"refit ridge must be a number >= 0, got {ridge!r}")
    layers = bert_layers(encoder)
    if len(originals) != len(layers):
        raise ModelError(f"refit got the original FFN of {len(originals)} layers, the encoder has {len(layers)}")
    was_training = encoder.training
    encoder.eval()
    residuals = []
    try:
        for layer, (inter0, out0) in zip(layers, originals):
            residuals.append(_refit_layer(encoder, layer, inter0, out0, batches, float(ridge)))
    finally:
        encoder.train(was_training)
    return residuals


def _refit_layer(encoder: nn.Module, layer: nn.Module, inter0: nn.Module, out0: nn.Linear, batches: Batches,
                 ridge: float) -> float:
    dense = layer.output.dense
    if dense.bias is None:
        raise ModelError("the FFN refit needs output.dense to have a bias")
    k = dense.in_features
    dev = dense.weight.device
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=dev)
    cross = torch.zeros(k + 1, dense.out_features, dtype=torch.float64, device=dev)
    y_sum = torch.zeros(dense.out_features, dtype=torch.float64, device=dev)
    y_sq = torch.zeros((), dtype=torch.float64, device=dev)
    state: dict[str, torch.Tensor] = {}
    count = 0

    def grab(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal count
        keep = state["mask"].reshape(-1).bool().to(out.device)
        h = out.reshape(-1, out.shape[-1])[keep].double()
        y = out0(inter0(args[0])).reshape(-1, out0.out_features)[keep].double()
        ha = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1)
        gram.add_(ha.T @ ha)
        cross.add_(ha.T @ y)
        y_sum.add_(y.sum(0))
        y_sq.add_((y * y).sum())
        count += len(h)
        raise _Stop

    handle = layer.intermediate.register_forward_hook(grab)
    try:
        for ids, mask in batches:
            state["mask"] = mask
            try:
                encoder(ids.to(dev), mask.to(dev))
            except _Stop:
                pass
    finally:
        handle.remove()
    if count <= k:
        raise ConfigError(f"the FFN refit needs more real tokens than kept neurons ({count} <= {k}): "
                          "give more calibration sentences")
    reg = ridge * gram.diagonal()[:-1].mean()
    eye = torch.eye(k + 1, dtype=gram.dtype, device=dev)
    eye[-1, -1] = 0.0  # the bias is not shrunk
    solution = torch.linalg.solve(gram + reg * eye, cross)
    if not torch.isfinite(solution).all():
        raise ModelError("the FFN refit gave non-finite weights; give more calibration sentences or a larger ridge")
    # unexplained variance from the normal equations: sum ||y - X s||^2 = sum y^2 - 2 s.C + s.G s
    sse = y_sq - 2 * (solution * cross).sum() + (solution * (gram @ solution)).sum()
    total = y_sq - (y_sum * y_sum).sum() / count
    dense.weight.copy_(solution[:-1].T.to(dense.weight.dtype))
    dense.bias.copy_(solution[-1].to(dense.bias.dtype))
    return float((sse / total.clamp(min=1e-30)).clamp(min=0.0))


__all__ = ["refit_ffn_outputs"]
