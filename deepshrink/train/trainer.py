"""A small trainer shared by every stage: SGD/Adam, LR schedules, seeds, checkpoints, progress bar.

Compression stages plug in through the model itself (masks and shared weights are
parametrizations, so gradients and updates respect them with no trainer support needed)
and through an optional ``loss_fn`` (e.g. distillation).

Under ``torchrun --nproc_per_node=N`` the same ``fit`` trains with DistributedDataParallel
(see ``deepshrink.train.distributed``): ``batch_size`` stays the global batch, split over ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from deepshrink.core.devices import handed_back
from deepshrink.core.errors import ArtifactError, ConfigError, DataError, DeepShrinkError
from deepshrink.core.fileio import atomic_writer
from deepshrink.core.guards import check_gradients, check_weights
from deepshrink.core.progress import track
from deepshrink.data.augment import parse_augment
from deepshrink.train import distributed, shm_allreduce
from deepshrink.train.distributed import DistContext

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; validated on creation."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    augment: str | None = None  # e.g. "shift:2": see deepshrink.data.augment

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("step_size", 1), ("warmup_epochs", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"train: {name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"train: {name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"train: lr must be a positive number, got {self.lr}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"train: gamma (the step schedule's factor) must be in (0, 1], got {self.gamma}")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(
                self.grad_clip, (int, float)) or not self.grad_clip > 0 or not math.isfinite(self.grad_clip)):
            raise ConfigError(f"train: grad_clip must be a positive number or None, got {self.grad_clip!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"train: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "step"):
            raise ConfigError(f"train: schedule must be constant, cosine or step, got {self.schedule!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("train: weight_decay >= 0, momentum and label_smoothing in [0, 1) required")
        if self.augment is not None:
            try:
                parse_augment(self.augment)
            except ConfigError as exc:
                raise ConfigError(f"train: {exc}") from None

    def replace(self, **changes: object) -> TrainConfig:
        return TrainConfig(**{**asdict(self), **changes})

    def identity(self) -> dict[str, object]:
        """The fields that define the training, for fingerprints: those added later are left out at their
        default (no augmentation), so checkpoints and caches written before them still match."""
        fields = asdict(self)
        if fields["augment"] is None:
            del fields["augment"]
        return fields


@dataclass
class TrainResult:
    epochs_run: int
    steps: int
    final_loss: float
    history: list[float]


def _training_error(description: str, x: torch.Tensor, exc: BaseException) -> DeepShrinkError:
    """One line for a batch the model or the loss cannot take (torch raises it from deep inside)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "more than 1 value per channel" in reason:
        return DataError(f"{description}: a batch of one sample reached a batch norm in training mode; use a "
                         "batch size that does not leave 1 sample over, or drop it")
    if "cross_entropy" in reason or "tuple" in reason or "dict" in reason:
        return DataError(f"{description}: the loss cannot take the model's output ({reason}); a model that "
                         "returns a tuple or dict needs a loss_fn that picks the logits")
    return DataError(f"{description}: a training batch of shape {tuple(x.shape)} ({x.dtype}) does not run through "
                     f"the model and loss: {reason}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs so runs repeat on the same machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with the multi-tensor (``foreach``) implementation, which torch picks only on CUDA by default.

    On CPU it gives bit-identical updates to the per-parameter loop (tested) at a fraction of its per-step
    Python and dispatch overhead (one call per group of tensors instead of several per parameter).
    """
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Trainer:
    """Trains a classifier; checkpoints each epoch atomically when ``checkpoint`` is given and resumes from it."""

    def __init__(self, model: nn.Module, config: TrainConfig, *, loss_fn: LossFn | None = None,
                 device: torch.device | str | None = None, checkpoint: str | os.PathLike[str] | None = None,
                 progress: bool | None = None, description: str = "train") -> None:
        self.model = model
        self.cfg = config
        self.device = distributed.local_device(torch.device(device) if device is not None else default_device())
        self.loss_fn = loss_fn or self._cross_entropy
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.progress = progress
        self.description = description

    def _cross_entropy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y, label_smoothing=self.cfg.label_smoothing)

    def fit(self, data: Dataset | DataLoader) -> TrainResult:
        """Train on ``self.device``. The model comes back in the train/eval mode it had and on the device it was
        on, also when training fails: later stages (CPU int8 kernels, export, measurement) run it there."""
        was_training = self.model.training
        try:
            with handed_back(self.model):
                return self._fit(data)
        finally:
            self.model.train(was_training)

    def _fit(self, data: Dataset | DataLoader) -> TrainResult:
        cfg = self.cfg
        ctx = distributed.setup(self.device)
        seed_everything(cfg.seed + (ctx.rank if ctx else 0))  # rank 0 seeds as a single process does
        if len(data) == 0:
            raise ConfigError("train: the training data is empty")
        shuffle_gen = torch.Generator()
        loader, sampler = self._loader(data, shuffle_gen, ctx)
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("train: the model has no trainable parameters")
        if self.checkpoint is not None:  # before an epoch of work is spent, not at the first save
            folder = self.checkpoint.parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise ArtifactError(f"cannot write checkpoint {self.checkpoint}: folder {folder} "
                                    f"{'is not writable' if folder.is_dir() else 'does not exist'}")
        settings = self._checkpoint_settings = self._settings(data, loader, params, ctx)
        if not distributed.same_on_every_rank(list(settings.values()), ctx):
            raise ConfigError(f"{self.description}: the processes of this torchrun job train with different "
                              "settings, data or models (every rank must run the same command and data)")
        opt = make_optimizer(params, cfg)
        sched = make_schedule(opt, cfg, len(loader))
        distributed.barrier(ctx)  # no rank reads a checkpoint that rank 0 may still be writing
        start_epoch, history, steps = self._resume(opt, sched, ctx, settings)
        self.model.train()
        net = self._wrap(ctx)
        epoch_loss = history[-1] if history else float("nan")
        show = self.progress if ctx is None or ctx.is_main else False
        param_dtype = next((p.dtype for p in params if p.is_floating_point()), None)
        augment = parse_augment(cfg.augment) if cfg.augment else None
        augment_gen = torch.Generator()
        for epoch in range(start_epoch, cfg.epochs):
            total, count = 0.0, 0
            # Each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
            shuffle_gen.manual_seed(cfg.seed * 100_003 + epoch)
            augment_gen.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + (ctx.rank if ctx else 0) + 1)
            if sampler is not None:
                sampler.set_epoch(epoch)
            batches = track(loader, f"{self.description} {epoch + 1}/{cfg.epochs}", total=len(loader),
                            enabled=show)
            for x, y in batches:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if not y.is_floating_point() and y.dtype != torch.int64:
                    y = y.long()  # int32 / uint8 class labels: what cross-entropy takes
                if x.is_floating_point() and param_dtype is not None and x.dtype != param_dtype:
                    x = x.to(param_dtype)  # e.g. numpy's default float64 data for a float32 model
                if augment is not None:
                    x = augment(x, augment_gen)
                try:
                    loss = self.loss_fn(net, x, y)
                except IndexError as exc:  # cross-entropy's "Target 12 is out of bounds"
                    if "out of bounds" not in str(exc) or y.dtype not in (torch.int64, torch.int32):
                        raise
                    bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
                    raise DataError(f"{self.description}: label {bad} in the training data is out of range "
                                    f"for the model's outputs ({str(exc).splitlines()[0]})") from None
                except DeepShrinkError:
                    raise
                except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
                    raise _training_error(self.description, x, exc) from None
                opt.zero_grad(set_to_none=True)
                if ctx is None:
                    step_loss = float(loss.detach())
                    if not math.isfinite(step_loss):
                        raise DeepShrinkError(
                            f"{self.description}: loss became {step_loss} at epoch {epoch + 1}, step {steps}; "
                            "training diverged (lower the learning rate)"
                        )
                    loss.backward()
                    total += step_loss * len(y)
                    count += len(y)
                else:
                    # No collective of our own per step: a non-finite loss on any rank makes its gradients
                    # non-finite, and DDP's all-reduce spreads them to every rank, so all ranks stop together.
                    loss.backward()
                    _check_synced_gradients(params, loss, self.description, epoch, steps)
                    total += loss.detach().double() * len(y)
                    count += len(y)
                if cfg.grad_clip:
                    norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                    if not torch.isfinite(norm):  # name the layer before clipping spreads NaN everywhere
                        check_gradients(self.model, f"{self.description}: epoch {epoch + 1}, step {steps}")
                    nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm)
                opt.step()
                sched.step()
                steps += 1
            if ctx is not None:  # the global mean loss of the epoch: one all-reduce per epoch
                summed = distributed.all_reduce_sum(
                    torch.stack([torch.as_tensor(total, dtype=torch.float64, device=self.device),
                                 torch.tensor(float(count), dtype=torch.float64, device=self.device)]), ctx)
                total, count = float(summed[0]), int(summed[1])
            epoch_loss = total / max(1, count)
            history.append(epoch_loss)
            # a finite loss can still leave NaN/inf weights after the last step: never checkpoint those
            check_weights(self.model, f"{self.description}: after epoch {epoch + 1}; training diverged")
            self._save_checkpoint(epoch + 1, steps, opt, sched, history, ctx)
        return TrainResult(epochs_run=cfg.epochs - start_epoch, steps=steps, final_loss=epoch_loss,
                           history=history)

    def _loader(self, data: Dataset | DataLoader, shuffle_gen: torch.Generator,
                ctx: DistContext | None) -> tuple[DataLoader, DistributedSampler | None]:
        """The batches of one process: the data as given alone; a rank's shard of each global batch under DDP."""
        if ctx is None:
            loader = data if isinstance(data, DataLoader) else DataLoader(
                data, batch_size=self.cfg.batch_size, shuffle=True, generator=shuffle_gen, drop_last=False,
            )
            return loader, None
        shuffle, drop_last = True, False
        if isinstance(data, DataLoader):
            if data.batch_size is None:
                raise ConfigError("train: under torchrun pass a Dataset, or a DataLoader with a batch_size "
                                  "(custom batch samplers cannot be sharded over ranks)")
            dataset, global_batch = data.dataset, data.batch_size
            extra = {"num_workers": data.num_workers, "collate_fn": data.collate_fn, "pin_memory": data.pin_memory}
            shuffle = not isinstance(data.sampler, SequentialSampler)  # the loader's own choices carry over
            drop_last = data.drop_last
        else:
            dataset, global_batch, extra = data, self.cfg.batch_size, {}
        if global_batch % ctx.world_size:
            raise ConfigError(f"train: the global batch of {global_batch} does not divide over {ctx.world_size} "
                              f"processes (each would take {math.ceil(global_batch / ctx.world_size)}, another "
                              "batch and step count than one process): choose a multiple of the process count")
        if len(dataset) < ctx.world_size:
            raise DataError(f"train: {len(dataset)} training samples for {ctx.world_size} processes: every "
                            "process needs at least one")
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                     seed=self.cfg.seed, drop_last=drop_last)
        per_rank = global_batch // ctx.world_size
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=drop_last, **extra), sampler

    def _settings(self, data: Dataset | DataLoader, loader: DataLoader, params: list[nn.Parameter],
                  ctx: DistContext | None) -> dict[str, int]:
        """What every rank must share, as integers: a digest of the training settings, the data size, the
        parameter count, the batches per epoch and the epochs. A checkpoint must match the first three to be
        resumed (more epochs extend a run; the batches per epoch follow the process count)."""
        plain = (int, float, str, bool, type(None))
        fields = {k: v for k, v in self.cfg.identity().items()  # more epochs may extend a run; callables vary
                  if k != "epochs" and (isinstance(v, plain) or isinstance(v, tuple) and all(
                      isinstance(x, plain) for x in v))}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()
        return {"settings": int.from_bytes(digest[:7], "little"), "samples": len(data if not isinstance(
            data, DataLoader) else data.dataset), "parameters": sum(p.numel() for p in params),
            "batches": len(loader), "epochs": self.cfg.epochs}

    def _wrap(self, ctx: DistContext | None) -> nn.Module:
        """DistributedDataParallel around the model under torchrun (it broadcasts rank 0's weights)."""
        if ctx is None:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True)
        if ctx.backend == "gloo" and shm_allreduce.wanted(ctx.world_size):
            numel = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            try:
                shm_allreduce.SharedMemoryAllReduce(numel).register(ddp)
            except shm_allreduce.SharedMemoryUnavailable:
                if shm_allreduce.required():
                    raise
                # auto: every rank got the same answer, so all keep gloo's all-reduce together
        return ddp

    def _save_checkpoint(self, epoch: int, steps: int, opt, sched, history: list[float],
                         ctx: DistContext | None = None) -> None:
        if self.checkpoint is None:
            return
        rank_rngs = distributed.gather_rng_states(torch.get_rng_state(), ctx) if ctx is not None else None
        if ctx is not None and not ctx.is_main:
            return  # only rank 0 writes; the weights are identical on every rank
        np_state = np.random.get_state()
        state = {
            "epoch": epoch,
            "steps": steps,
            "settings": self._checkpoint_settings,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "history": torch.tensor(history, dtype=torch.float64),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                          "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        }
        if rank_rngs is not None:
            state["torch_rng_ranks"] = rank_rngs
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device).cpu()
        with atomic_writer(self.checkpoint) as fh:
            torch.save(state, fh)

    def _resume(self, opt, sched, ctx: DistContext | None = None,
                settings: dict[str, int] | None = None) -> tuple[int, list[float], int]:
        """(epochs done, loss history, steps done) from the checkpoint, or a fresh start without one."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0, [], 0
        where = f"cannot resume from checkpoint {self.checkpoint}"
        advice = "delete it to start over, or give another checkpoint path"
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        except Exception:  # empty, truncated, another format: never retried without weights_only
            raise DeepShrinkError(f"{where}: not a readable trainer checkpoint (empty, truncated or another "
                                  f"kind of file); {advice}") from None
        if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "scheduler", "history"} <= set(state):
            raise DeepShrinkError(f"{where}: not a deepshrink trainer checkpoint; {advice}")
        saved = state.get("settings")
        if settings is not None and isinstance(saved, dict):
            # a run may be extended by more epochs (checked below); batches per epoch follow the process count
            differ = [k for k, v in settings.items() if k in saved and k not in ("batches", "epochs")
                      and int(saved[k]) != v]
            if differ:
                raise DeepShrinkError(f"{where}: it was written with other {', '.join(differ)} (training settings, "
                                      f"data or model); {advice}")
        try:
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            _restore_rng(state, ctx, self.device)
        except Exception as exc:  # any unreadable checkpoint is one clear error
            raise DeepShrinkError(f"{where}: it does not fit this model and optimizer "
                                  f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                  f"); {advice}") from None
        epoch = int(state["epoch"])
        if not 0 <= epoch <= self.cfg.epochs:
            raise DeepShrinkError(f"{where}: it has {epoch} epochs done of a run of {self.cfg.epochs}; {advice}")
        return epoch, [float(v) for v in state["history"]], int(state.get("steps", 0))


def _check_synced_gradients(params: list[nn.Parameter], loss: torch.Tensor, description: str,
                            epoch: int, step: int) -> None:
    """Under DDP: stop every rank together when the (all-reduced, hence identical) gradients are not finite."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not bool(torch.isfinite(nn.utils.get_total_norm(grads))):
        local = float(loss.detach())
        where = f"loss {local} on this rank" if not math.isfinite(local) else "the loss diverged on another rank"
        raise DeepShrinkError(
            f"{description}: gradients became non-finite at epoch {epoch + 1}, step {step} ({where}); "
            "training diverged (lower the learning rate)"
        )


def _restore_rng(state: dict, ctx: DistContext | None, device: torch.device) -> None:
    """Put back the RNG states a checkpoint recorded (each rank its own when the world size matches)."""
    ranks = state.get("torch_rng_ranks")
    if ctx is not None and ranks is not None and ranks.shape[0] == ctx.world_size:
        # a copy: a row of the stacked states is a view at an offset, which set_rng_state misreads (SIGSEGV)
        torch.set_rng_state(ranks[ctx.rank].cpu().clone())
    else:
        torch.set_rng_state(state["torch_rng"].cpu().clone())
    if "python_rng" in state:
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy_rng" in state:
        np_state = state["numpy_rng"]
        np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["gauss"]))
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
