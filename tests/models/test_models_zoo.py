import pytest
import torch

from deepshrink.core.errors import ModelError
from deepshrink.models import arch_spec, available, create

# Published sizes: LeNet-300-100 266,610 params; Caffe LeNet-5 430,500 weights;
# MNIST-1D reference MLP 15,210 and CNN 5,210 params (Greydanus 2020).
CASES = [
    ("lenet300", (3, 1, 28, 28), 266_610),
    ("lenet5", (3, 1, 28, 28), 431_080),
    ("mlp1d", (3, 40), 15_210),
    ("cnn1d", (3, 40), 5_210),
    ("cnn1d", (3, 1, 40), 5_210),
]


@pytest.mark.parametrize("name,shape,params", CASES)
def test_zoo_models_take_their_samples_as_they_come(name, shape, params):
    model = create(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(*shape)).shape == (shape[0], 10)


def test_lenet5_has_the_papers_431k_weights():
    model = create("lenet5")
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert weights == 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10 == 430_500


def test_every_registered_model_records_a_rebuildable_spec():
    for name in available():
        spec = arch_spec(create(name))
        assert spec["zoo"] == name
        rebuilt = create(spec["zoo"], **spec["kwargs"])
        assert sum(p.numel() for p in rebuilt.parameters()) > 0


def test_kwargs_are_recorded():
    model = create("mlp", hidden=[30, 30], dropout=0.1)
    assert arch_spec(model)["kwargs"] == {"hidden": [30, 30], "dropout": 0.1}


def test_unknown_model_lists_choices():
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*lenet300"):
        create("resnet9000")


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ModelError, match="bad arguments"):
        create("lenet300", nonsense=3)


def test_model_not_from_zoo_cannot_be_rebuilt():
    with pytest.raises(ModelError, match="not created by deepshrink.models.create"):
        arch_spec(torch.nn.Linear(2, 2))
