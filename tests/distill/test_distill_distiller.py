import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.distill import DistillConfig, Distiller, FeatureLink, distill
from deepshrink.prune import get_mask, unstructured
from deepshrink.train import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=0)


def _data(n=128, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :classes]).argmax(1)
    return TensorDataset(x, y)


def _mlp(hidden, seed, d=8, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class _Conv(nn.Module):
    def __init__(self, channels: int, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_gradient_flows_only_into_the_student():
    teacher, student = _mlp(16, 1), _mlp(8, 2)
    t_before, s_before = _flat(teacher), _flat(student)
    teacher.train()
    distill(student, teacher, _data(), DistillConfig(temperature=3.0, features=(FeatureLink("0", "0"),),
                                                     train=FAST), device="cpu")
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(_flat(teacher), t_before)
    assert not torch.allclose(_flat(student), s_before)
    assert teacher.training  # its mode is given back
    assert all(p.requires_grad for p in teacher.parameters())  # frozen by no_grad, not by mutating it
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks  # hooks removed


@pytest.mark.slow
def test_student_learns_to_agree_with_the_teacher():
    teacher, student = _mlp(32, 1), _mlp(8, 2)
    data = _data(256)
    x = data.tensors[0]
    agree = lambda: (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()  # noqa: E731
    before = agree()
    distill(student, teacher, data, DistillConfig(temperature=2.0, alpha=1.0, train=FAST.replace(epochs=15)),
            device="cpu")
    assert agree() > max(0.8, before + 0.25)


def test_logit_matching_objective_and_training():
    teacher, student = _mlp(16, 1), _mlp(8, 2)
    data = _data()
    cfg = DistillConfig(alpha=0.4, soft_loss="logit_mse", train=FAST)
    d = Distiller(student, teacher, cfg)
    d.prepare(data)
    x, y = data.tensors[0][:5], data.tensors[1][:5]
    s, t = student(x), teacher(x)
    by_hand = 0.4 * ((s - t) ** 2).sum(1).mean() / 6 + 0.6 * nn.functional.cross_entropy(s, y)
    assert d.loss(d, x, y).item() == pytest.approx(by_hand.item(), rel=1e-6)
    d.close()
    x_all = data.tensors[0]
    gap = lambda: ((student(x_all) - teacher(x_all)) ** 2).mean().item()  # noqa: E731
    before = gap()
    distill(student, teacher, data, DistillConfig(alpha=1.0, soft_loss="logit_mse", train=FAST.replace(epochs=8)),
            device="cpu")
    assert gap() < 0.5 * before


def test_adapters_are_created_for_mismatched_widths():
    d = Distiller(_mlp(8, 0), _mlp(16, 1), DistillConfig(features=(FeatureLink("0", "0"), FeatureLink("2", "2"))))
    d.prepare(_data())
    assert isinstance(d.adapters["link0"], nn.Linear)
    assert (d.adapters["link0"].in_features, d.adapters["link0"].out_features) == (8, 16)
    assert isinstance(d.adapters["link1"], nn.Identity)  # both output 3 logits
    conv = Distiller(_Conv(4), _Conv(6), DistillConfig(features=(FeatureLink("conv", "conv"),
                                                                FeatureLink("conv", "conv", loss="attention"))))
    conv.prepare(_images())
    a = conv.adapters["link0"]
    assert isinstance(a, nn.Conv2d) and a.kernel_size == (1, 1) and (a.in_channels, a.out_channels) == (4, 6)
    assert isinstance(conv.adapters["link1"], nn.Identity)  # attention maps pool channels: no adapter
    d.close()
    conv.close()


def test_adapters_are_trained_and_the_feature_loss_falls():
    teacher, student = _Conv(6), _Conv(4)
    cfg = DistillConfig(features=(FeatureLink("conv", "conv", weight=5.0),), train=FAST.replace(epochs=6))
    res = distill(student, teacher, _images(64), cfg, device="cpu")
    assert res.history[-1] < res.history[0]


def test_incompatible_outputs_fail_before_training():
    student = _mlp(8, 0, classes=5)
    before = _flat(student)
    with pytest.raises(ModelError, match=r"teacher outputs shape \(3,\).*student outputs \(5,\)"):
        distill(student, _mlp(8, 1), _data(), DistillConfig(train=FAST), device="cpu")
    assert torch.equal(_flat(student), before)
    assert not student[0]._forward_hooks


def test_unknown_layer_names_list_close_matches():
    with pytest.raises(ConfigError, match=r"student has no layer named 'conf'.*conv"):
        Distiller(_Conv(4), _Conv(6), DistillConfig(features=(FeatureLink("conf", "conv"),)))
    with pytest.raises(ConfigError, match="teacher has no layer named 'heads'"):
        Distiller(_Conv(4), _Conv(6), DistillConfig(features=(FeatureLink("conv", "heads"),)))


def test_unadaptable_feature_shapes_are_a_clear_error():
    # conv map (N, 4, 6, 6) against a linear output (N, 3): different ranks
    d = Distiller(_Conv(4), _Conv(6), DistillConfig(features=(FeatureLink("conv", "head"),)))
    with pytest.raises(ModelError, match="different ranks"):
        d.prepare(_images())
    d.close()


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"temperature": -2.0}, {"temperature": float("inf")},
                                    {"alpha": 1.5}, {"alpha": -0.1}, {"features": ("0",)},
                                    {"train": {"epochs": 1}}, {"cache_teacher": "yes"},
                                    {"soft_loss": "l2"}])
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"loss": "l1"}, {"weight": -1.0}, {"weight": float("nan")},
                                    {"student_layer": ""}])
def test_bad_feature_link_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        FeatureLink(**{"student_layer": "a", "teacher_layer": "b", **kwargs})


def test_the_same_model_cannot_teach_itself():
    m = _mlp(8, 0)
    with pytest.raises(ModelError, match="separate"):
        distill(m, m, _data(), DistillConfig(train=FAST))


def test_masks_stay_in_force_through_distillation():
    teacher, student = _mlp(16, 1), _mlp(16, 2)
    unstructured(student, 0.75)
    mask = get_mask(student[0]).clone()
    distill(student, teacher, _data(), DistillConfig(features=(FeatureLink("0", "0"),), train=FAST), device="cpu")
    assert torch.equal(get_mask(student[0]), mask)
    assert torch.all(student[0].weight[mask == 0] == 0)
    assert int((student[0].weight != 0).sum()) <= int(mask.sum())


def test_cached_teacher_outputs_give_the_same_training():
    teacher = _mlp(16, 1)
    runs = []
    for cache in (False, True):
        student = _mlp(8, 2)
        cfg = DistillConfig(features=(FeatureLink("0", "0"),), train=FAST, cache_teacher=cache)
        runs.append((distill(student, teacher, _data(), cfg, device="cpu"), _flat(student)))
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-5)
    assert runs[0][0].history == pytest.approx(runs[1][0].history, rel=1e-5)


def test_same_seed_gives_identical_students():
    teacher = _mlp(16, 1)
    out = []
    for _ in range(2):
        student = _mlp(8, 2)
        distill(student, copy.deepcopy(teacher), _data(), DistillConfig(features=(FeatureLink("0", "0"),),
                                                                        train=FAST), device="cpu")
        out.append(_flat(student))
    assert torch.equal(out[0], out[1])


def test_label_smoothing_of_the_training_config_reaches_the_hard_term():
    data, teacher = _data(), _mlp(32, 0)
    students = []
    for smoothing in (0.0, 0.3):
        student = _mlp(16, 1)
        cfg = DistillConfig(temperature=2.0, alpha=0.5,
                            train=TrainConfig(epochs=1, batch_size=32, lr=0.05, label_smoothing=smoothing))
        distill(student, teacher, data, cfg)
        students.append(_flat(student))
    assert not torch.equal(*students)


def test_a_student_that_cannot_take_the_data_is_one_model_error():
    data, teacher = _data(), _mlp(32, 0)
    student = nn.Sequential(nn.Linear(9, 3))  # the data has 8 features
    with pytest.raises(ModelError, match=r"the student cannot run on the training data \(a batch of shape"):
        distill(student, teacher, data, DistillConfig(train=TrainConfig(epochs=1)))
