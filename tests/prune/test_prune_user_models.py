"""Structured pruning on models users write: data-dependent Python, transposed convolutions, tied weights,
ratio patterns, importance options, and loading into the wrong model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.prune import structured
from deepshrink.prune.structured import structured_with_report


class Branchy(nn.Module):
    """A data-dependent ``if`` after a layer with weights (fx must run the partial graph on real tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c0(x))
        if x.dim() == 4:
            x = F.relu(self.c1(x))
        return self.fc(x.mean((2, 3)))



def test_data_dependent_control_flow_after_weights_is_traced_and_pruned() -> None:
    torch.manual_seed(0)
    m = Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    p = structured(m, x, ratio=0.5)
    assert (p.c0.out_channels, p.c1.in_channels, p.c1.out_channels, p.fc.in_features) == (8, 8, 8, 8)
    with torch.no_grad():
        assert p(x).shape == (2, 10)
        # pruning nothing keeps the function: the traced branch is the one the example takes
        assert torch.equal(structured(m, x, ratio=0.0)(x), m(x))


@pytest.mark.parametrize("how", ["depthwise", "svd", "tucker2"])
def test_factorized_convolutions_can_be_pruned(how: str) -> None:
    from deepshrink.factorize import factorize_layer, to_depthwise_separable

    torch.manual_seed(0)
    m = Branchy().eval()
    if how == "depthwise":
        to_depthwise_separable(m, "c1")
    else:
        factorize_layer(m, "c1", rank=4, **({"method": "tucker2"} if how == "tucker2" else {}))
    x = torch.randn(2, 3, 8, 8)
    p = structured(m, x, ratio=0.5)
    assert p.c0.out_channels == 8
    with torch.no_grad():
        assert p(x).shape == (2, 10)


class Decoder(nn.Module):
    def __init__(self, up_out: int = 20) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, up_out, 2, stride=2)
        self.c1 = nn.Conv2d(up_out, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.c1(F.relu(self.up(F.relu(self.c0(x)))))).mean((2, 3)))


@pytest.mark.parametrize("up_out", [16, 20])
def test_transposed_convolutions_are_left_intact_with_a_note(up_out: int) -> None:
    torch.manual_seed(0)
    m = Decoder(up_out).eval()
    x = torch.randn(2, 3, 16, 16)
    p, report = structured_with_report(m, x, ratio=0.5)
    assert torch.equal(p.up.weight, m.up.weight) and torch.equal(p.c0.weight, m.c0.weight)
    assert p.c1.out_channels == 3 and p.c1.in_channels == up_out
    assert "transposed convolutions are not pruned" in report.skipped["up"]
    with torch.no_grad():
        assert p(x).shape == (2, 3)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.emb(t)
        return self.head(h + self.fc2(F.relu(self.fc1(h))))


def test_tied_weights_stay_tied(tmp_path) -> None:
    torch.manual_seed(0)
    t = torch.randint(0, 40, (2, 6))
    p = structured(TiedLM().eval(), t, ratio=0.5)
    assert p.head.weight is p.emb.weight and p.emb.weight.shape == (40, 8)
    assert sum(q.numel() for q in p.parameters()) == 40 * 8 + 8 * 16 + 16 + 16 * 8 + 8
    deepshrink.save(p, tmp_path / "t.dsk")
    back = deepshrink.load(tmp_path / "t.dsk", model=TiedLM())
    with torch.no_grad():
        assert torch.equal(back(t), p(t))


def test_ratio_patterns_must_match_and_take_types_and_regexes() -> None:
    torch.manual_seed(0)
    m = Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match="ratio pattern 'cx' matches no layer"):
        structured(m, x, ratio={"*": 0.5, "cx": 0.25})
    by_type = structured(m, x, ratio={"*": 0.0, nn.Conv2d: 0.5})
    by_regex = structured(m, x, ratio={"*": 0.0, "re:c[01]": 0.5})
    assert by_type.c0.out_channels == by_regex.c0.out_channels == 8


def test_importance_options_are_checked_and_passed_on() -> None:
    torch.manual_seed(0)
    m = Branchy().eval()
    x = torch.randn(8, 3, 8, 8)
    with pytest.raises(ConfigError, match="unknown sats"):
        structured_with_report(m, x, importance="activation", importance_kwargs={"sats": "rms"}, calibration=x)
    calls = []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(logits, labels)

    data = [(x, torch.randint(0, 10, (8,)))]
    structured_with_report(m, x, importance="taylor", importance_kwargs={"loss_fn": loss_fn}, calibration=data)
    assert calls


def test_loading_into_another_model_is_a_model_error(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    deepshrink.save(structured(Branchy().eval(), x, ratio=0.5), tmp_path / "b.dsk")
    with pytest.raises(ModelError, match="does not fit the Decoder passed as model="):
        deepshrink.load(tmp_path / "b.dsk", model=Decoder())
