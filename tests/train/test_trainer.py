import pytest
import torch
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError, DeepShrinkError
from deepshrink.measure import evaluate
from deepshrink.train import TrainConfig, Trainer


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long()  # linearly separable, no margin
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("opt,schedule", [("sgd", "cosine"), ("adam", "step"), ("sgd", "constant")])
def test_training_learns_a_separable_problem(opt, schedule):
    data = _blobs()
    model = _model()
    before = evaluate(model, data).accuracy
    res = Trainer(model, TrainConfig(epochs=20, lr=0.05, optimizer=opt, schedule=schedule, step_size=10)).fit(data)
    after = evaluate(model, data).accuracy
    assert after > 0.9 and after > before + 0.1
    assert res.steps == 20 * 4 and len(res.history) == 20


def test_same_seed_gives_identical_weights():
    runs = []
    for _ in range(2):
        model = _model()
        Trainer(model, TrainConfig(epochs=2, lr=0.05, seed=3)).fit(_blobs())
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    cfg = TrainConfig(epochs=4, lr=0.05, seed=1)
    full = _model()
    Trainer(full, cfg).fit(_blobs())

    ckpt = tmp_path / "ckpt.pt"
    calls = {"n": 0}

    def stop_in_epoch_3(model, x, y):
        calls["n"] += 1
        if calls["n"] > 2 * 4 + 1:  # 4 steps per epoch: die one step into epoch 3
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(model(x), y)

    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), cfg, checkpoint=ckpt, loss_fn=stop_in_epoch_3).fit(_blobs())
    fresh = _model(seed=9)  # a different init: everything must come from the checkpoint
    res = Trainer(fresh, cfg, checkpoint=ckpt).fit(_blobs())
    assert res.epochs_run == 2
    for a, b in zip(full.parameters(), fresh.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_divergence_stops_with_a_clear_error():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(DeepShrinkError, match="diverged"):
        Trainer(model, TrainConfig(epochs=1)).fit(_blobs())


@pytest.mark.parametrize("kwargs", [{"epochs": -1}, {"lr": 0}, {"lr": float("nan")}, {"batch_size": 0},
                                    {"optimizer": "lbfgs"}, {"schedule": "wild"}, {"momentum": 1.5}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_empty_data_is_rejected():
    with pytest.raises(ConfigError, match="empty"):
        Trainer(_model(), TrainConfig(epochs=1)).fit(TensorDataset(torch.zeros(0, 4), torch.zeros(0).long()))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_optimizer_is_multi_tensor_and_bit_identical_to_the_per_parameter_loop(opt):
    from deepshrink.train.trainer import make_optimizer

    cfg = TrainConfig(optimizer=opt, lr=0.01, momentum=0.9, weight_decay=1e-3)

    def run(make):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        optimizer = make(list(model.parameters()))
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            optimizer.step()
        return optimizer, [p.detach().clone() for p in model.parameters()]

    ours, got = run(lambda params: make_optimizer(params, cfg))
    if opt == "adam":
        _, want = run(lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=1e-3, foreach=False))
    else:
        _, want = run(lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-3, foreach=False))
    assert ours.param_groups[0]["foreach"] is True
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_rank_restores_its_own_random_state_from_a_checkpoint_row() -> None:
    from deepshrink.train.distributed import DistContext
    from deepshrink.train.trainer import _restore_rng

    states = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    torch.manual_seed(22)
    expected = torch.rand(4)
    ctx = DistContext(rank=1, world_size=2, local_rank=1, backend="gloo")
    # rank 1's row is a view at an offset: set_rng_state read it wrongly and crashed the process (SIGSEGV)
    _restore_rng({"torch_rng_ranks": torch.stack(states), "torch_rng": states[0]}, ctx, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_a_label_the_model_cannot_output_is_one_clear_error() -> None:
    from deepshrink.core.errors import DataError

    model = torch.nn.Linear(4, 3)
    data = TensorDataset(torch.randn(8, 4), torch.tensor([0, 1, 2, 5, 0, 1, 2, 0]))
    with pytest.raises(DataError, match="label 5 in the training data is out of range"):
        Trainer(model, TrainConfig(epochs=1, batch_size=8), progress=False).fit(data)


@pytest.mark.parametrize("changes", [{"grad_clip": -1.0}, {"grad_clip": 0.0}, {"step_size": 0}, {"epochs": 1.5},
                                     {"gamma": -0.1}, {"gamma": 0.0}, {"warmup_epochs": -1}, {"lr": float("nan")},
                                     {"batch_size": True}])
def test_every_setting_is_checked_when_the_config_is_made(changes) -> None:
    with pytest.raises(ConfigError, match="train: "):
        TrainConfig(**changes)


def _blob_task(n: int = 96, classes: int = 3, bn: bool = False):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 8).float()
    layers = [torch.nn.Linear(8, 16)] + ([torch.nn.BatchNorm1d(16)] if bn else []) + [torch.nn.ReLU(),
                                                                                    torch.nn.Linear(16, classes)]
    torch.manual_seed(0)
    return torch.nn.Sequential(*layers), x, y


def test_int32_labels_and_float64_inputs_train_as_usual() -> None:
    model, x, y = _blob_task()
    ref_model, _, _ = _blob_task()
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-2)
    Trainer(model, cfg, progress=False).fit(TensorDataset(x.double(), y.int()))
    Trainer(ref_model, cfg, progress=False).fit(TensorDataset(x, y))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.state_dict().values(),
                                                               ref_model.state_dict().values()))


def test_training_data_mistakes_are_one_data_error() -> None:
    from deepshrink.core.errors import DataError

    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-2)
    model, x, y = _blob_task()
    with pytest.raises(DataError, match="label -1 in the training data is out of range"):
        Trainer(model, cfg, progress=False).fit(TensorDataset(x, y.masked_fill(y == 2, -1)))

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(t), t

    with pytest.raises(DataError, match="returns a tuple or dict needs a loss_fn"):
        Trainer(Pair(), cfg, progress=False).fit(TensorDataset(x, y))
    model, x, y = _blob_task(n=97, bn=True)  # 97 = 3 x 32 + 1: the last batch holds one sample
    with pytest.raises(DataError, match="a batch of one sample reached a batch norm"):
        Trainer(model, cfg, progress=False).fit(TensorDataset(x, y))


def test_a_checkpoint_of_other_settings_or_no_checkpoint_at_all_is_one_clear_line(tmp_path):
    ckpt = tmp_path / "c.pt"
    Trainer(_model(), TrainConfig(epochs=2, lr=0.05, batch_size=32), checkpoint=ckpt).fit(_blobs())
    for cfg, fragment in ((TrainConfig(epochs=1, lr=0.05, batch_size=32), "2 epochs done of a run of 1"),
                          (TrainConfig(epochs=3, lr=0.5, batch_size=32), "other settings")):
        with pytest.raises(DeepShrinkError, match=fragment) as err:
            Trainer(_model(), cfg, checkpoint=ckpt).fit(_blobs())
        assert "\n" not in str(err.value)
    # more epochs extend the run from the checkpoint
    res = Trainer(_model(), TrainConfig(epochs=3, lr=0.05, batch_size=32), checkpoint=ckpt).fit(_blobs())
    assert res.epochs_run == 1
    for content in (b"", b"DSK1 not a checkpoint"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(content)
        with pytest.raises(DeepShrinkError, match="not a readable trainer checkpoint") as err:
            Trainer(_model(), TrainConfig(epochs=1), checkpoint=bad).fit(_blobs())
        assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_folder_that_does_not_exist_fails_before_training(tmp_path):
    from deepshrink.core.errors import ArtifactError

    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ArtifactError, match="does not exist"):
        Trainer(model, TrainConfig(epochs=1), checkpoint=tmp_path / "no" / "c.pt").fit(_blobs())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no epoch was spent
