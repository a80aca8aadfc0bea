"""evaluate() on a fixed identity classifier whose logits (and hence loss) are known by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.measure import evaluate

# logits == inputs; predictions 0, 1, 1, 0 against labels 0, 1, 0, 0 -> 3 of 4 right
X = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [3.0, 1.0]])
Y = torch.tensor([0, 1, 0, 0])
# cross-entropy of (a, b) for label 0 is log(1 + e^(b - a)); for label 1 it is log(1 + e^(a - b))
EXPECTED_LOSS = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))
                 + math.log1p(math.exp(-2))) / 4


def _identity() -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return lin


@pytest.mark.parametrize(
    "data",
    [TensorDataset(X, Y), DataLoader(TensorDataset(X, Y), batch_size=3), (X, Y)],
    ids=["dataset", "loader", "tuple"],
)
def test_known_accuracy_and_loss(data: object) -> None:
    result = evaluate(_identity(), data, batch_size=3)
    assert result.correct == 3
    assert result.total == 4
    assert result.accuracy == pytest.approx(0.75)
    assert result.loss == pytest.approx(EXPECTED_LOSS, rel=1e-6)
    # per sample, in data order, across the batch boundary (batch_size 3): predictions 0, 1, 1, 0
    assert result.hits.tolist() == [True, True, False, True] and result.hits.device.type == "cpu"


def test_training_flag_restored_and_eval_mode_used() -> None:
    model = nn.Sequential(_identity(), nn.Dropout(p=0.9))
    model.train()
    result = evaluate(model, (X, Y))
    assert result.loss == pytest.approx(EXPECTED_LOSS, rel=1e-6)  # dropout off during evaluation
    assert model.training and model[1].training


def test_empty_data_is_data_error() -> None:
    with pytest.raises(DataError, match="empty"):
        evaluate(_identity(), TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_bad_inputs() -> None:
    with pytest.raises(ModelError):
        evaluate(_identity(), (torch.zeros(4, 5), Y))
    with pytest.raises(DataError):
        evaluate(_identity(), (X, torch.tensor([0, 5, 0, 0])))
    with pytest.raises(DataError):
        evaluate(_identity(), (X, Y[:3]))
    with pytest.raises(ConfigError):
        evaluate(_identity(), (X, Y), batch_size=0)
