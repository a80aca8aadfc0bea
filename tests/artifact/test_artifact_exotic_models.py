"""Round trips and refusals for models outside the zoo's plain float32 layers: shared submodules, torch's own
parametrizations, float64/float16/bfloat16, complex, lazy and extra-state modules, torch int8 modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.artifact import StoragePolicy
from deepshrink.artifact.model_io import round_small_tensors
from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.models import create


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_a_submodule_used_twice_saves_and_loads(tmp_path):
    def make() -> nn.Module:
        torch.manual_seed(0)
        block = nn.Linear(8, 8)
        return nn.Sequential(block, nn.ReLU(), block)

    m = make()
    deepshrink.save(m, tmp_path / "m.dsk")
    back = deepshrink.load(tmp_path / "m.dsk", model=make())
    _same(m, back)
    assert back[0] is back[2]  # still one module


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "orthogonal"])
def test_torch_parametrizations_keep_their_own_tensors(tmp_path, wrap):
    p = torch.nn.utils.parametrizations

    def make() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(getattr(p, wrap)(nn.Linear(6, 6)), nn.Tanh())

    m = make()
    with torch.no_grad():  # trained values differ from a fresh model's
        for t in m.parameters():
            t.add_(0.25)
    x = torch.randn(4, 6)
    m.eval()
    deepshrink.save(m, tmp_path / "m.dsk")
    back = deepshrink.load(tmp_path / "m.dsk", model=make().eval())
    _same(m, back)
    assert torch.equal(m(x), back(x))


def test_float64_weights_are_stored_exactly_and_keep_their_dtype(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4)).double()
    with torch.no_grad():
        m[0].weight[0, :3] = 0.0  # sparse storage too
    deepshrink.save(m, tmp_path / "m.dsk")
    back = deepshrink.load(tmp_path / "m.dsk", model=nn.Sequential(nn.Linear(5, 4)).double())
    _same(m, back)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_zoo_model_comes_back_in_the_dtype_it_was_saved_in(tmp_path, dtype):
    m = create("lenet300").to(dtype)
    with torch.no_grad():
        m.fc1.weight[:, :400] = 0  # a sparse layer: bfloat16 used to crash the sparse encoder
    deepshrink.save(m, tmp_path / "m.dsk")
    back = deepshrink.load(tmp_path / "m.dsk")
    _same(m, back)


def test_tensors_the_format_cannot_hold_are_refused_by_name(tmp_path):
    m = nn.Linear(2, 2)
    m.register_buffer("phase", torch.randn(3, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="phase.*complex64"):
        deepshrink.save(m, tmp_path / "c.dsk")

    class Extra(nn.Linear):
        def get_extra_state(self):
            return {"any": "python object"}

        def set_extra_state(self, state):
            pass

    with pytest.raises(ModelError, match="get_extra_state"):
        deepshrink.save(nn.Sequential(Extra(2, 2)), tmp_path / "e.dsk")
    with pytest.raises(ModelError, match="uninitialized lazy parameter"):
        deepshrink.save(nn.Sequential(nn.LazyLinear(3)), tmp_path / "l.dsk")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_torch_int8_modules_are_refused_instead_of_saving_an_empty_file(tmp_path):
    q = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                                               {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ModelError, match="torch int8 kernels"):
        deepshrink.save(q, tmp_path / "q.dsk")
    assert not (tmp_path / "q.dsk").exists()


def test_fp16_storage_reloads_batch_norm_statistics_exactly_after_rounding(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    m.train()
    m(torch.randn(8, 1, 6, 6))  # running statistics that fp16 rounds
    m.eval()
    round_small_tensors(m)
    deepshrink.save(m, tmp_path / "m.dsk", StoragePolicy(small_dtype="float16"))
    back = deepshrink.load(tmp_path / "m.dsk", model=nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4),
                                                                     nn.ReLU()))
    _same(m, back)
