"""Importance criteria behind one contract, in an explicit registry.

An :class:`Importance` scores every weight of a layer (a tensor shaped like the weight, >= 0, larger
means keep). Unstructured pruning ranks those scores; structured pruning reduces them to one score per
output channel (or uses :meth:`Importance.channel_scores` when the criterion measures channels directly,
as the activation criteria do). Criteria that need data (activations, gradients) gather it in
:meth:`Importance.prepare` from calibration batches ``(inputs, labels)``.
"""

from __future__ import annotations

import inspect

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.core.registry import Registry

Batches = Iterable[Any]


def _inputs_of(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


class Importance:
    """Base contract: ``scores(name, module) -> weight-shaped tensor`` after an optional ``prepare``."""

    name = "base"
    needs_data = False

    def prepare(self, model: nn.Module, layers: Mapping[str, nn.Module], data: Batches | None) -> None:
        """Gather whatever statistics the criterion needs (default: nothing)."""
        if self.needs_data and data is None:
            raise ConfigError(f"importance {self.name!r} needs calibration data (batches of inputs, labels)")

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def channel_scores(self, name: str, module: nn.Module) -> torch.Tensor | None:
        """Per-output-channel scores when the criterion measures channels directly; None derives them."""
        return None

    def observe(self, model: nn.Module, layers: Mapping[str, nn.Module]) -> contextlib.AbstractContextManager[None]:
        """A context the pruning engine wraps around each retraining between pruning steps, for criteria that
        learn from the training steps themselves (``taylor_train``). Default: observes nothing."""
        return contextlib.nullcontext()


class MagnitudeImportance(Importance):
    """|w|^p: L1 (p=1) or L2 (p=2) magnitude; per channel the p-norm of the channel's weights."""

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise ConfigError(f"magnitude importance: p must be 1 or 2, got {p}")
        self.p = p
        self.name = f"l{p}"

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        return module.weight.detach().abs().float().pow(self.p)


class RandomImportance(Importance):
    """Uniform random scores (a baseline every criterion should beat); seeded."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        return torch.rand(module.weight.shape, generator=self.gen)


class ThresholdImportance(Importance):
    """|w| / max|w| of the layer: pruning below a value t removes weights under t x the layer's largest."""

    name = "threshold"

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        w = module.weight.detach().abs().float()
        return w / w.max().clamp_min(1e-12)


class StdImportance(Importance):
    """|w| / std(w) (Deep Compression): one global cut q prunes |w| < q x std per layer."""

    name = "std"

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        w = module.weight.detach().float()
        return w.abs() / w.std().clamp_min(1e-12)


class _HookedImportance(Importance):
    """Shared machinery: forward hooks on the layers over the calibration batches."""

    needs_data = True

    def __init__(self, max_batches: int = 8) -> None:
        self.max_batches = max_batches
        self.inp: dict[str, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}

    def _stat(self, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, model: nn.Module, layers: Mapping[str, nn.Module], data: Batches | None) -> None:
        super().prepare(model, layers, data)
        counts: dict[str, int] = {}
        self.inp, self.out = {}, {}

        def hook(name: str) -> Callable[..., None]:
            def fn(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
                if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
                    return
                cdim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1
                i, o = self._stat(args[0].detach(), cdim), self._stat(out.detach(), cdim)
                self.inp[name] = self.inp.get(name, 0) + i
                self.out[name] = self.out.get(name, 0) + o
                counts[name] = counts.get(name, 0) + 1
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for k, batch in enumerate(data or []):
                    if k >= self.max_batches:
                        break
                    model(_inputs_of(batch)[0])
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        for n, c in counts.items():
            self.inp[n] = self._finish(self.inp[n] / c)
            self.out[n] = self._finish(self.out[n] / c)

    def _finish(self, mean: torch.Tensor) -> torch.Tensor:
        """Turn the batch-averaged statistic into the score statistic (identity unless overridden)."""
        return mean

    def _input_stat(self, name: str, module: nn.Module) -> torch.Tensor:
        if name not in self.inp:
            raise ConfigError(f"importance {self.name!r}: layer {name!r} saw no calibration input")
        w = module.weight
        stat = self.inp[name]
        if isinstance(module, nn.modules.conv._ConvNd):
            g, out, ipg = module.groups, w.shape[0], w.shape[1]
            if stat.numel() != g * ipg:
                raise ConfigError(f"importance {self.name!r}: layer {name!r} input does not match its weight")
            full = stat.view(g, 1, ipg).expand(g, out // g, ipg).reshape(out, ipg)
            return full.view(out, ipg, *([1] * (w.dim() - 2))).expand_as(w)
        if stat.numel() != w.shape[-1]:
            raise ConfigError(f"importance {self.name!r}: layer {name!r} input does not match its weight")
        return stat.view(1, -1).expand_as(w)

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        """|w_ij| x statistic of input j (Wanda-style): a weight matters when its input is active."""
        return module.weight.detach().abs().float() * self._input_stat(name, module)

    def channel_scores(self, name: str, module: nn.Module) -> torch.Tensor | None:
        return self.out.get(name)


def _reduce_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % t.dim()
    return t.transpose(0, dim).reshape(t.shape[dim], -1).float()


ACTIVATION_STATS = ("std", "rms", "mean_abs")


class ActivationImportance(_HookedImportance):
    """Activation size per channel over the calibration batches; ``stat`` picks which.

    Removing weight ij changes output i by ``w_ij * x_j``. ``rms`` scores ``|w_ij| * sqrt(E[x_j^2])`` (Wanda's
    ``|w| * ||X_j||_2``): the expected size of that change. ``std`` (the default) scores
    ``|w_ij| * std(x_j)``: the constant part ``w_ij * E[x_j]`` is what a bias absorbs (retraining does it), so
    only the varying part is lost; e.g. a pixel that is always background costs nothing. ``mean_abs`` is the
    mean absolute activation.
    """

    name = "activation"

    def __init__(self, max_batches: int = 8, stat: str = "std") -> None:
        if stat not in ACTIVATION_STATS:
            raise ConfigError(f"importance 'activation': stat must be one of {', '.join(ACTIVATION_STATS)}, "
                              f"got {stat!r}")
        super().__init__(max_batches)
        self.stat = stat

    def _stat(self, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
        r = _reduce_except(t, channel_dim)
        return torch.stack([r.abs().mean(1), r.mean(1), r.pow(2).mean(1)])

    def _finish(self, mean: torch.Tensor) -> torch.Tensor:
        mean_abs, first, second = mean
        if self.stat == "mean_abs":
            return mean_abs
        if self.stat == "rms":
            return second.sqrt()
        return (second - first**2).clamp_min(0).sqrt()


class APoZImportance(_HookedImportance):
    """1 - APoZ: the fraction of non-positive (zero after ReLU) activations, Hu et al. 2016."""

    name = "apoz"

    def _stat(self, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return (_reduce_except(t, channel_dim) > 0).float().mean(1)


class TaylorImportance(Importance):
    """First-order Taylor ``|w x dL/dw|`` averaged over many small gradient batches.

    Each calibration batch is split into micro-batches of ``micro_batch`` samples, one gradient each. At a
    trained minimum the gradient of a large batch is close to zero for every weight (noise averages out),
    so ``|w x g|`` over a few big batches mostly ranks noise; over many small batches its mean grows with
    the per-sample gradient spread (the Fisher information), which is what removing a weight costs.
    ``max_batches`` calibration batches are used; ``micro_batch=None`` takes each batch whole. ``loss_fn``
    (logits, labels) -> loss should be the loss the model was trained with (e.g. with label smoothing): at a
    minimum of one loss the gradient of another is not noise but a systematic push. Default: cross-entropy.
    """

    name = "taylor"
    needs_data = True

    def __init__(self, max_batches: int = 8, micro_batch: int | None = 16,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                        or micro_batch < 1):
            raise ConfigError(f"importance 'taylor': micro_batch must be a positive integer or None, "
                              f"got {micro_batch!r}")
        self.max_batches = max_batches
        self.micro_batch = micro_batch
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.acc: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, layers: Mapping[str, nn.Module], data: Batches | None) -> None:
        super().prepare(model, layers, data)
        self.acc = {}
        was_training = model.training
        model.eval()
        try:
            for k, batch in enumerate(data or []):
                if k >= self.max_batches:
                    break
                x, y = _inputs_of(batch)
                if y is None:
                    raise ConfigError("importance 'taylor' needs labelled batches (inputs, labels)")
                step = self.micro_batch or len(x)
                for i in range(0, len(x), step):
                    model.zero_grad(set_to_none=True)
                    self.loss_fn(model(x[i:i + step]), y[i:i + step]).backward()
                    for n, m in layers.items():
                        w = _weight_param(m)
                        if w.grad is not None:
                            s = (module_weight(m).detach() * w.grad.detach()).abs()
                            self.acc[n] = self.acc.get(n, 0) + s
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def scores(self, name: str, module: nn.Module) -> torch.Tensor:
        if name not in self.acc:
            raise ConfigError(f"importance 'taylor': layer {name!r} received no gradient")
        return self.acc[name].float()


TRAIN_TAYLOR_STATS = ("mean", "abs", "sq")


class TrainingTaylorImportance(TaylorImportance):
    """First-order Taylor ``|w x dL/dw|`` accumulated over the retraining steps (Molchanov et al. 2017, 2019).

    While the engine retrains between pruning steps (:meth:`observe`), a hook on each selected weight records
    ``w_t x g_t`` at every optimizer step t (``g_t`` the gradient of the training loss on that step's batch, in
    training mode, ``w_t`` the weight then); the next pruning step scores with the statistic over those steps:

    - ``stat="mean"`` (default): ``|mean_t w_t g_t|``: the Taylor estimate of the loss change on removing the
      weight with the gradient averaged over all retraining batches (Molchanov 2017 averages ``w g`` before the
      absolute value). Under SGD with weight decay lambda a weight that has settled has ``E[g] = -lambda w``,
      so its score is ``lambda w^2``; weights still moving score by how hard the loss pushes them;
    - ``"abs"``: ``mean_t |w_t g_t|`` (the calibration ``taylor`` criterion's statistic);
    - ``"sq"``: ``mean_t (w_t g_t)^2`` (Molchanov 2019's squared per-batch contribution).

    Steps with no gradient observed (the first pruning step, before any retraining; structured pruning; no
    ``train``) fall back to the calibration batches exactly as ``taylor`` does (``|w g|`` summed over
    micro-batches). Under torchrun the per-rank sums are all-reduced, so every rank prunes the same weights.
    """

    name = "taylor_train"

    def __init__(self, max_batches: int = 8, micro_batch: int | None = 16,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 stat: str = "mean") -> None:
        if stat not in TRAIN_TAYLOR_STATS:
            raise ConfigError(f"importance 'taylor_train': stat must be one of {', '.join(TRAIN_TAYLOR_STATS)}, "
                              f"got {stat!r}")
        super().__init__(max_batches, micro_batch, loss_fn)
        self.stat = stat
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def observe(self, model: nn.Module, layers: Mapping[str, nn.Module]) -> Iterator[None]:
        def hook(name: str) -> Callable[[torch.Tensor], None]:
            def fn(param: torch.Tensor) -> None:
                if param.grad is None:
                    return
                # the trainable tensor under a mask: its gradient is mask x dL/dW and its pruned entries are
                # zero, so param x grad equals W x dL/dW exactly
                wg = param.detach() * param.grad.detach()
                if self.stat == "abs":
                    wg = wg.abs()
                elif self.stat == "sq":
                    wg = wg.square()
                self.sums[name] = self.sums[name] + wg if name in self.sums else wg.clone()
                self.counts[name] = self.counts.get(name, 0) + 1
            return fn

        handles = [_weight_param(m).register_post_accumulate_grad_hook(hook(n)) for n, m in layers.items()
                   if _weight_param(m).requires_grad]  # a frozen layer gets no gradient, so no score
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def prepare(self, model: nn.Module, layers: Mapping[str, nn.Module], data: Batches | None) -> None:
        sums, counts = self.sums, self.counts
        self.sums, self.counts = {}, {}
        if not counts:  # nothing observed since the last pruning step: the calibration batches
            super().prepare(model, layers, data)
            return
        names = sorted(sums)
        count = torch.tensor([float(counts[n]) for n in names], device=sums[names[0]].device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for n in names:
                torch.distributed.all_reduce(sums[n])
            torch.distributed.all_reduce(count)
        self.acc = {}
        for n, c in zip(names, count.tolist()):
            mean = sums[n] / c
            self.acc[n] = mean.abs() if self.stat == "mean" else mean


def module_weight(module: nn.Module) -> torch.Tensor:
    return module.weight


def _weight_param(module: nn.Module) -> torch.Tensor:
    """The trainable tensor behind ``weight`` (the original under a mask parametrization)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations["weight"].original
    return module.weight


CRITERIA: Registry[Callable[..., Importance]] = Registry("importance criterion")
CRITERIA.add("l1", lambda: MagnitudeImportance(p=1))
CRITERIA.add("l2", lambda: MagnitudeImportance(p=2))
CRITERIA.add("random", lambda seed=0: RandomImportance(seed))
CRITERIA.add("threshold", lambda: ThresholdImportance())
CRITERIA.add("std", lambda: StdImportance())
CRITERIA.add("activation", lambda max_batches=8, stat="std": ActivationImportance(max_batches, stat))
CRITERIA.add("apoz", lambda max_batches=8: APoZImportance(max_batches))
CRITERIA.add("taylor", lambda max_batches=8, micro_batch=16, loss_fn=None:
             TaylorImportance(max_batches, micro_batch, loss_fn))
CRITERIA.add("taylor_train", lambda max_batches=8, micro_batch=16, stat="mean", loss_fn=None:
             TrainingTaylorImportance(max_batches, micro_batch, loss_fn=loss_fn, stat=stat))


def get_importance(spec: str | Importance, **kwargs: Any) -> Importance:
    """A criterion by registered name (``l1``, ``l2``, ``random``, ``threshold``, ``std``, ``activation``,
    ``apoz``, ``taylor``, ``taylor_train``) or an :class:`Importance` instance passed through."""
    if isinstance(spec, Importance):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"importance must be a criterion name or an Importance, got {type(spec).__name__}")
    factory = CRITERIA.get(spec)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"importance {spec!r} takes {', '.join(accepted) or 'no options'}; got unknown "
                          f"{', '.join(unknown)}")
    return factory(**kwargs)
