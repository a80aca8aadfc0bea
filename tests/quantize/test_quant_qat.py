"""QAT: STE gradients, LSQ step-size learning, training with the Trainer, masks intact, exact freeze."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import deepshrink
import deepshrink.quantize as Q
from deepshrink.artifact.quantized import save_quantized
from deepshrink.models import create
from deepshrink.prune.masks import get_mask, set_mask
from deepshrink.quantize import primitives as P
from deepshrink.quantize.modules import QuantizedWeight
from deepshrink.quantize.qat import FakeQuantWeight, LSQWeight, fake_quant_ste, round_ste
from deepshrink.train import TrainConfig, Trainer


def test_round_ste_passes_gradient_through() -> None:
    x = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.tensor([0.0, 2.0, -2.0]))
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_fake_quant_ste_values_and_clipped_gradient() -> None:
    s, z = torch.tensor(0.5), torch.tensor(8.0)  # 4-bit: representable -4.0 .. 3.5
    x = torch.tensor([0.3, 1.1, 10.0, -10.0], requires_grad=True)
    y = fake_quant_ste(x, s, z, 4)
    assert torch.equal(y, P.fake_quantize(x.detach(), s, z, 4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))  # zero outside the range


def test_lsq_step_gets_gradient() -> None:
    w = torch.randn(4, 10, requires_grad=True)
    lsq = LSQWeight(w.detach(), 3)
    lsq(w).pow(2).sum().backward()
    assert lsq.step.grad is not None and lsq.step.grad.abs().sum() > 0
    assert w.grad is not None


def _data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    return TensorDataset(x, y)


@pytest.mark.parametrize("lsq", [False, True])
def test_qat_trains_keeps_masks_and_freezes_exactly(tmp_path, lsq: bool) -> None:
    torch.manual_seed(0)
    model = create("mlp", in_features=16, hidden=[32], num_classes=4)
    mask = (torch.rand(32, 16) > 0.5).float()
    set_mask(model.layers["fc1"], mask)
    q = Q.quantize(model, Q.QATConfig(weight_bits=4, lsq=lsq))
    plist = q.layers["fc1"].parametrizations["weight"]
    assert isinstance(plist[-1], LSQWeight if lsq else FakeQuantWeight)
    before = q.layers["fc1"].parametrizations["weight"].original.detach().clone()
    data = _data()
    Trainer(q, TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=1e-2), progress=False,
            device="cpu").fit(data)
    after = q.layers["fc1"].parametrizations["weight"].original.detach()
    assert not torch.equal(before, after)  # STE let gradients through
    assert torch.equal(get_mask(q.layers["fc1"]), mask)
    assert torch.equal(q.layers["fc1"].weight.detach() * (1 - mask), torch.zeros(32, 16))
    q.eval()
    x = data.tensors[0][:32]
    with torch.no_grad():
        fake = q(x)
        assert torch.equal(Q.freeze(q)(x), fake)
    assert isinstance(q.layers["fc1"].parametrizations["weight"][-1], QuantizedWeight)
    assert int((q.layers["fc1"].weight != 0).sum()) <= int(mask.sum())
    save_quantized(q, tmp_path / "qat.dsk")
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "qat.dsk")(x), fake)


def test_qat_with_activations_needs_calibration() -> None:
    model = create("mlp", in_features=16, hidden=[8], num_classes=4)
    with pytest.raises(deepshrink.core.errors.DataError):
        Q.quantize(model, Q.QATConfig(act_bits=8))
    q = Q.quantize(model, Q.QATConfig(act_bits=8), _data().tensors[0])
    out = q(_data().tensors[0][:4])
    assert out.shape == (4, 4)
    out.sum().backward()
    assert q.layers["fc1"].parametrizations["weight"].original.grad is not None


def test_qat_recovers_low_bit_accuracy() -> None:
    torch.manual_seed(0)
    data = _data(256)
    model = create("mlp", in_features=16, hidden=[32], num_classes=4)
    Trainer(model, TrainConfig(epochs=12, batch_size=64, optimizer="adam", lr=1e-2), progress=False,
            device="cpu").fit(data)
    x, y = data.tensors

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == y).float().mean())

    base = acc(model)
    ptq = acc(Q.quantize(model, Q.IntWeightConfig(bits=2)))
    qat = Q.quantize(model, Q.QATConfig(weight_bits=2, lsq=True))
    Trainer(qat, TrainConfig(epochs=5, batch_size=64, optimizer="adam", lr=3e-3), progress=False,
            device="cpu").fit(data)
    assert acc(qat) >= ptq - 0.02 and acc(qat) > base - 0.15
