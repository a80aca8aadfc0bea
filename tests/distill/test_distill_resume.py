"""A distillation run killed mid-way and started again with the same call ends bit-identical."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import deepshrink.quantize as Q
from deepshrink.core.errors import DeepShrinkError
from deepshrink.distill import DistillConfig, Distiller, FeatureLink, distill
from deepshrink.prune import get_mask, unstructured
from deepshrink.train import TrainConfig

EPOCHS, STEPS_PER_EPOCH = 4, 4


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    return TensorDataset(x, x[:, :3].argmax(1))


def _teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _student(compress: bool):
    torch.manual_seed(2)
    # dropout draws from the RNG every step: the checkpoint must restore the RNG state
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3))
    if compress:  # the seeds' pipeline: prune -> quantize -> distill; masks and quantizers must survive
        unstructured(model, 0.5)
        model = Q.quantize(model, Q.QATConfig(weight_bits=4, lsq=True), _data().tensors[0][:64])
    return model


def _config(cache: bool = False):
    return DistillConfig(temperature=3.0, alpha=0.7, features=(FeatureLink("1", "1"),), cache_teacher=cache,
                         train=TrainConfig(epochs=EPOCHS, batch_size=32, lr=0.05, optimizer="adam", seed=5))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("compress,cache", [(False, False), (True, True)])
def test_killed_run_resumes_bit_identical(tmp_path, monkeypatch, compress, cache):
    full = _student(compress)
    full_res = distill(full, _teacher(), _data(), _config(cache), device="cpu")

    ckpt = tmp_path / "distill.pt"
    calls = {"n": 0}
    real_loss = Distiller.loss

    def dying_loss(self, model, x, y):
        calls["n"] += 1
        if calls["n"] > 2 * STEPS_PER_EPOCH + 1:  # die one step into epoch 3
            raise KeyboardInterrupt
        return real_loss(self, model, x, y)

    monkeypatch.setattr(Distiller, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        distill(_student(compress), _teacher(), _data(), _config(cache), checkpoint=ckpt, device="cpu")
    monkeypatch.setattr(Distiller, "loss", real_loss)

    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["steps"] == 2 * STEPS_PER_EPOCH
    assert {"optimizer", "scheduler", "torch_rng", "python_rng", "numpy_rng"} <= set(saved)
    assert any(k.startswith("adapters.link0") for k in saved["model"])  # widths 12 vs 16: adapter saved
    if compress:
        assert any(k.endswith(".mask") for k in saved["model"])  # prune masks are in the checkpoint

    torch.manual_seed(123)  # a disturbed global RNG: everything must come from the checkpoint
    resumed = _student(compress)
    res = distill(resumed, _teacher(), _data(), _config(cache), checkpoint=ckpt, device="cpu")
    assert res.epochs_run == EPOCHS - 2
    assert res.history == full_res.history
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if compress:
        assert torch.equal(get_mask(resumed[0]), get_mask(full[0]))


def test_a_finished_run_restarted_does_nothing_more(tmp_path):
    ckpt = tmp_path / "d.pt"
    first = _student(False)
    distill(first, _teacher(), _data(), _config(), checkpoint=ckpt, device="cpu")
    again = _student(False)
    res = distill(again, _teacher(), _data(), _config(), checkpoint=ckpt, device="cpu")
    assert res.epochs_run == 0
    for x, y in zip(first.parameters(), again.parameters()):
        assert torch.equal(x, y)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "d.pt"
    distill(_student(False), _teacher(), _data(), _config().__class__(train=TrainConfig(epochs=1)),
            checkpoint=ckpt, device="cpu")
    other = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 3))
    with pytest.raises(DeepShrinkError, match="cannot resume"):
        distill(other, _teacher(), _data(), DistillConfig(train=TrainConfig(epochs=1)), checkpoint=ckpt,
                device="cpu")
