"""Pair a teacher with a student: hooks by layer name, learned adapters, optional teacher-output cache.

``Distiller`` is an ``nn.Module`` holding the student and the adapters (what is optimized and
checkpointed); the teacher is kept aside, frozen in eval mode, and never receives gradients.
``distill`` runs it through the shared ``Trainer``, so checkpoint/resume and ``torchrun`` work as
for any other stage, and masks / quantizers on the student (parametrizations) stay in force.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from deepshrink.core.devices import handed_back
from deepshrink.core.errors import ConfigError, DeepShrinkError, ModelError
from deepshrink.measure._runtime import first_line
from deepshrink.distill.config import DistillConfig, FeatureLink
from deepshrink.distill.losses import attention_transfer_loss, feature_loss, kd_loss
from deepshrink.train.trainer import Trainer, TrainResult

_CONVS: dict[int, type[nn.Module]] = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model output: the tensor itself, ``.logits`` (Hugging Face style) or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"distill: cannot find logits in a model output of type {type(output).__name__}")


def find_module(model: nn.Module, name: str, role: str) -> nn.Module:
    """``model``'s sub-module ``name``; an unknown name lists the closest existing names."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; layers are: {', '.join(names[:20])}"
    raise ConfigError(f"distill: the {role} has no layer named {name!r}{hint}")


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], where: str) -> nn.Module:
    """A learned map from the student feature to the teacher's width (Identity when the shapes agree).

    ``N x C`` -> Linear; ``N x C x spatial`` with equal spatial sizes -> 1x1 Conv1d/2d/3d;
    ``N x L x d`` (transformer states) with equal lengths -> Linear on the last dim.
    """
    s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
    if s == t:
        return nn.Identity()
    if len(s) != len(t):
        raise ModelError(f"distill {where}: student feature shape {tuple(student_shape)} and teacher feature "
                         f"shape {tuple(teacher_shape)} have different ranks")
    if len(s) == 1:
        return nn.Linear(s[0], t[0])
    if s[1:] == t[1:] and len(s) + 1 in _CONVS:
        return _CONVS[len(s) + 1](s[0], t[0], kernel_size=1)
    if len(s) == 2 and s[0] == t[0]:
        return nn.Linear(s[1], t[1])
    raise ModelError(f"distill {where}: cannot adapt student feature shape {tuple(student_shape)} to teacher "
                     f"shape {tuple(teacher_shape)} (only the channel / hidden width may differ; use "
                     "loss='attention' for CNN maps of different spatial sizes)")


class _Indexed(Dataset):
    """``(x, index)`` pairs over a dataset of ``(x, y)``: the loss looks the labels and teacher outputs up."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.data[i][0], i


class Distiller(nn.Module):
    """Student + adapters as one module; ``loss(model, x, y)`` is the trainer's loss function.

    ``forward(x)`` returns ``(student_output, adapted_student_features)``. Layer names are checked on
    construction; call ``prepare`` (``distill`` does) to probe shapes, build adapters and check that the
    teacher and student outputs agree before any training step. ``close()`` removes the hooks.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig) -> None:
        super().__init__()
        if not isinstance(config, DistillConfig):
            raise ConfigError(f"distill: config must be a DistillConfig, got {type(config).__name__}")
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise ModelError("distill: student and teacher must be torch.nn.Module instances")
        if student is teacher:
            raise ModelError("distill: the teacher must be a separate model (copy it before compressing)")
        self.config = config
        self.student = student
        self.__dict__["teacher"] = teacher  # not a sub-module: never optimized, moved by .train() or saved
        self.training = student.training
        self.adapters = nn.ModuleDict()
        self._feats: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._hooks: list[Any] = []
        self._cache: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        self.prepared = False
        for link in config.features:
            find_module(student, link.student_layer, "student")
            find_module(teacher, link.teacher_layer, "teacher")
        for role, model, names in (("student", student, {lk.student_layer for lk in config.features}),
                                   ("teacher", teacher, {lk.teacher_layer for lk in config.features})):
            for name in sorted(names):
                module = find_module(model, name, role)
                self._hooks.append(module.register_forward_hook(self._recorder(role, name)))

    def _recorder(self, role: str, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"distill: {role} layer {name!r} does not output a tensor")
            self._feats[role][name] = output

        return hook

    def close(self) -> None:
        """Remove the forward hooks from both models (the student keeps working as a plain model)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._cache = None

    def _collect(self, role: str, names: Sequence[str]) -> list[torch.Tensor]:
        found = self._feats[role]
        missing = [n for n in names if n not in found]
        if missing:
            raise ModelError(f"distill: {role} layer(s) {', '.join(missing)} did not run in the forward pass")
        out = [found[n] for n in names]
        found.clear()
        return out

    def forward(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        self._feats["student"].clear()
        out = self.student(x)
        feats = self._collect("student", [lk.student_layer for lk in self.config.features])
        return out, [self.adapters[f"link{i}"](f) for i, f in enumerate(feats)]

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits and hooked features for a batch (no gradients, eval mode)."""
        teacher = self.__dict__["teacher"]
        teacher.eval()
        self._feats["teacher"].clear()
        logits = logits_of(teacher(x))
        return logits, self._collect("teacher", [lk.teacher_layer for lk in self.config.features])

    def prepare(self, data: Dataset | DataLoader, device: torch.device | str | None = None) -> None:
        """Probe both models on two training samples: check outputs, build adapters, move the teacher."""
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ConfigError("distill: the training data is empty")
        dev = torch.device(device) if device is not None else next(
            (p.device for p in self.student.parameters()), torch.device("cpu"))
        teacher = self.__dict__["teacher"]
        teacher.to(dev)
        self.student.to(dev)
        sample = default_collate([dataset[i] for i in range(min(2, len(dataset)))])  # type: ignore[arg-type]
        x = sample[0].to(dev)
        modes = {m: m.training for m in self.student.modules()}
        try:
            self.student.eval()
            with torch.no_grad():
                self._feats["student"].clear()
                s_logits = logits_of(_run(self.student, x, "student"))
                s_feats = self._collect("student", [lk.student_layer for lk in self.config.features])
                try:
                    t_logits, t_feats = self.teacher_outputs(x)
                except DeepShrinkError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the user's forward raises any type
                    raise ModelError(f"distill: the teacher cannot run on the training data (a batch of shape "
                                     f"{tuple(x.shape)}): {first_line(exc)}") from None
        finally:
            for module, mode in modes.items():
                module.training = mode
        if s_logits.shape != t_logits.shape:
            raise ModelError(f"distill: teacher outputs shape {tuple(t_logits.shape[1:])} per sample but the "
                             f"student outputs {tuple(s_logits.shape[1:])}; they must match (same classes)")
        # adapters start from the same weights for a given seed, whatever the global RNG did before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)
            for i, (link, sf, tf) in enumerate(zip(self.config.features, s_feats, t_feats)):
                where = f"link {link.student_layer} -> {link.teacher_layer}"
                if link.loss == "attention":
                    attention_transfer_loss(sf, tf)  # raises a clear error on unusable shapes
                    adapter: nn.Module = nn.Identity()
                else:
                    adapter = make_adapter(sf.shape, tf.shape, where)
                self.adapters[f"link{i}"] = adapter.to(dev)
        self.prepared = True

    @torch.no_grad()
    def build_cache(self, data: Dataset, device: torch.device | str, batch_size: int = 256) -> Dataset:
        """Run the teacher once over ``data``; return ``(x, index)`` pairs whose loss reads the cache."""
        if isinstance(data, DataLoader):
            raise ConfigError("distill: cache_teacher needs a Dataset, not a DataLoader")
        dev = torch.device(device)
        logits, targets, feats = [], [], []
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
            t_logits, t_feats = self.teacher_outputs(x.to(dev))
            logits.append(t_logits)
            targets.append(torch.as_tensor(y))
            feats.append(t_feats)
        per_link = [torch.cat([f[i] for f in feats]) for i in range(len(self.config.features))]
        self._cache = (torch.cat(logits), torch.cat(targets).to(dev), per_link)
        return _Indexed(data)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The distillation objective for one batch; ``model`` is this module or its DDP wrapper."""
        if not self.prepared:
            raise ModelError("distill: call Distiller.prepare(data) before training")
        if self._cache is not None:
            cached_logits, cached_targets, cached_feats = self._cache
            index = y.to(cached_targets.device)
            targets, t_logits = cached_targets[index], cached_logits[index]
            t_feats = [f[index] for f in cached_feats]
        else:
            targets = y
            t_logits, t_feats = self.teacher_outputs(x)
        output, s_feats = model(x)
        cfg = self.config
        total = kd_loss(logits_of(output), t_logits, targets, cfg.temperature, cfg.alpha, cfg.soft_loss,
                        cfg.train.label_smoothing)
        for link, sf, tf in zip(cfg.features, s_feats, t_feats):
            if link.loss == "attention":
                total = total + link.weight * attention_transfer_loss(sf, tf)
            else:
                total = total + link.weight * feature_loss(sf, tf, link.loss)
        return total


def _run(model: Any, x: torch.Tensor, role: str) -> Any:
    """``model(x)``; a failure is one ModelError naming the role and the batch shape."""
    try:
        return model(x)
    except DeepShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's forward raises any type
        raise ModelError(f"distill: the {role} cannot run on the training data (a batch of shape "
                         f"{tuple(x.shape)}): {first_line(exc)}") from None


def distill(student: nn.Module, teacher: nn.Module, train_data: Dataset | DataLoader, config: DistillConfig, *,
            checkpoint: str | os.PathLike[str] | None = None, device: torch.device | str | None = None,
            progress: bool | None = None) -> TrainResult:
    """Train ``student`` in place to match ``teacher`` (frozen, eval mode) on ``train_data``.

    Checkpoints (student incl. masks/quantizer state, adapters, optimizer, scheduler, RNG, epoch) go to
    ``checkpoint`` atomically each epoch; running the same call again resumes from it. Works under
    ``torchrun`` like the plain trainer. Shapes and layer names are checked before the first step. Both models
    run on ``device`` (default: CUDA when there is one) and are returned to the devices they were on.
    """
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"distill: config must be a DistillConfig, got {type(config).__name__}")
    distiller = Distiller(student, teacher, config)  # checks the models and layer names
    teacher_mode = teacher.training
    try:
        with handed_back(student, teacher):
            trainer = Trainer(distiller, config.train, loss_fn=distiller.loss, device=device,
                              checkpoint=checkpoint, progress=progress, description="distill")
            distiller.prepare(train_data, trainer.device)
            data = distiller.build_cache(train_data, trainer.device) if config.cache_teacher else train_data
            return trainer.fit(data)
    finally:
        distiller.close()
        teacher.train(teacher_mode)


__all__ = ["Distiller", "FeatureLink", "distill", "find_module", "logits_of", "make_adapter"]
