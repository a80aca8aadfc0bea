"""Devices: training runs where it is told and hands the models back where they were (later stages -- CPU int8
kernels, export, measurement -- run them there); under torchrun each rank needs a GPU of its own on CUDA.

The CUDA tests need a GPU and are skipped without one (CI has none); they run on a GPU machine."""

import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError, DeepShrinkError
from deepshrink.distill import DistillConfig, FeatureLink, distill
from deepshrink.prune import get_mask
from deepshrink.prune.unstructured import prune_layer
from deepshrink.train import TrainConfig, Trainer, distributed

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _blobs(n: int = 128) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long())


def _model(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in (*model.parameters(), *model.buffers())}


def test_more_ranks_on_a_node_than_gpus_is_a_clear_error(monkeypatch) -> None:
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"local rank 1 needs a CUDA device .* this node has 1; .*"
                                          r"--nproc_per_node=1\) or train on the CPU"):
        distributed.setup(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"no CUDA device is visible; train on the CPU with gloo"):
        distributed.setup(torch.device("cuda"))


def _nan_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(net(x), y) * float("nan")


def test_fit_hands_the_model_back_where_it_found_it_on_success_and_on_error(monkeypatch) -> None:
    """Without a second device here, fit is told the model came from the meta device: it must end there."""
    from deepshrink.core import devices

    monkeypatch.setattr(devices, "module_device", lambda model: torch.device("meta"))
    model = _model().eval()
    Trainer(model, TrainConfig(epochs=1, lr=0.05), device="cpu", progress=False).fit(_blobs())
    assert _devices(model) == {"meta"} and not model.training
    model = _model().eval()
    with pytest.raises(DeepShrinkError, match="diverged"):
        Trainer(model, TrainConfig(epochs=1, lr=0.05), loss_fn=_nan_loss, device="cpu", progress=False).fit(_blobs())
    assert _devices(model) == {"meta"} and not model.training  # eval mode kept although training stopped


def test_a_failing_move_back_does_not_hide_the_error_that_stopped_training() -> None:
    class Sticky(nn.Sequential):
        """Every move fails once broken, as every CUDA call does after a device-side assert."""
        broken = False

        def _apply(self, fn, recurse=True):
            if self.broken:
                raise RuntimeError("CUDA error: device-side assert triggered")
            return super()._apply(fn, recurse)

    model = Sticky(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def breaking_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.broken = True
        return _nan_loss(net, x, y)

    with pytest.raises(DeepShrinkError, match="diverged"):
        Trainer(model, TrainConfig(epochs=1, lr=0.05), loss_fn=breaking_loss, device="cpu", progress=False).fit(
            _blobs())
    with pytest.raises(RuntimeError, match="device-side assert"):  # after success the move's own error shows
        Trainer(model, TrainConfig(epochs=1, lr=0.05), device="cpu", progress=False).fit(_blobs())


@needs_cuda
def test_training_on_cuda_hands_the_model_back_on_the_cpu_with_masks_kept() -> None:
    model = _model()
    prune_layer(model[0], keep=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, TrainConfig(epochs=2, lr=0.05), progress=False)
    assert trainer.device.type == "cuda"
    trainer.fit(_blobs())
    assert _devices(model) == {"cpu"}
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    weight = model[0].weight
    assert torch.equal(weight == 0, get_mask(model[0], "weight") == 0)  # the mask held on the GPU


@needs_cuda
def test_a_model_kept_on_cuda_stays_there_after_cpu_training_and_after_an_error() -> None:
    model = _model().cuda()
    Trainer(model, TrainConfig(epochs=1, lr=0.05), device="cpu", progress=False).fit(_blobs())
    assert _devices(model) == {"cuda"}

    cpu_model = _model()
    with pytest.raises(DeepShrinkError, match="diverged"):
        Trainer(cpu_model, TrainConfig(epochs=1, lr=0.05), loss_fn=_nan_loss, progress=False).fit(_blobs())
    assert _devices(cpu_model) == {"cpu"}


@needs_cuda
def test_distillation_on_cuda_hands_both_models_back_on_the_cpu() -> None:
    teacher, student = _model(1, hidden=16), _model(2)
    Trainer(teacher, TrainConfig(epochs=3, lr=0.05), progress=False).fit(_blobs())
    before = [p.detach().clone() for p in student.parameters()]
    cfg = DistillConfig(temperature=2.0, alpha=0.5, features=(FeatureLink("1", "1"),),
                        train=TrainConfig(epochs=2, batch_size=32, lr=0.05))
    distill(student, teacher, _blobs(), cfg, progress=False)
    assert _devices(student) == {"cpu"} and _devices(teacher) == {"cpu"}
    assert any(not torch.equal(a, p) for a, p in zip(before, student.parameters()))


def test_recover_hands_the_teacher_back_where_it_found_it(monkeypatch) -> None:
    from deepshrink.core import devices

    recover_module = importlib.import_module("deepshrink.factorize.recover")  # the package re-exports recover()
    teacher, student = _model(1), _model(2)
    monkeypatch.setattr(devices, "module_device",  # the teacher only (the Trainer hands the student back)
                        lambda model: torch.device("meta") if model is teacher else torch.device("cpu"))
    recover_module.recover(student, _blobs(), TrainConfig(epochs=1, lr=0.05), teacher=teacher, device="cpu",
                           progress=False)
    assert _devices(teacher) == {"meta"} and _devices(student) == {"cpu"}


@needs_cuda
def test_pruning_with_taylor_scores_gathered_while_retraining_on_cuda() -> None:
    """Taylor scores accumulate on the GPU during retraining; the masks are computed for the layers back on the
    CPU (the scores follow the layer's device)."""
    from deepshrink.prune import unstructured
    from deepshrink.prune.importance import TrainingTaylorImportance

    model = _model(hidden=16)
    rep = unstructured(model, 0.75, importance=TrainingTaylorImportance(), schedule="iterative",
                       schedule_kwargs={"steps": 2}, train=TrainConfig(epochs=1, batch_size=32, lr=0.05),
                       data=_blobs())
    assert rep.sparsity == pytest.approx(0.75, abs=0.02)
    assert _devices(model) == {"cpu"}
