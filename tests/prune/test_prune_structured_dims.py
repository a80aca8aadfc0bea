"""Structured pruning of grouped convolutions, nn.MultiheadAttention heads and the embedding dimension
(layer norms, positions, class token) that runs through residual streams."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink.artifact as artifact
from deepshrink.models import create
from deepshrink.prune.graph import build_graph
from deepshrink.prune.structured import structured_with_report

X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _randomise_norms(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.conv3(x).mean((2, 3)))


def test_grouped_conv_keeps_its_groups_and_equal_counts_per_group() -> None:
    model = _randomise_norms(GroupedNet())
    pruned, rep = structured_with_report(model, X, ratio=0.5)
    assert type(pruned.conv2) is nn.Conv2d
    assert (pruned.conv2.groups, pruned.conv2.in_channels, pruned.conv2.out_channels) == (4, 4, 8)
    assert tuple(pruned.conv2.weight.shape) == (8, 1, 3, 3)
    assert (pruned.conv3.groups, pruned.conv3.in_channels) == (2, 8)
    assert pruned.conv3.out_channels == 4 and tuple(pruned.conv3.weight.shape) == (4, 4, 3, 3)
    assert pruned(X).shape == (2, 10)
    assert rep.params_after < rep.params_before


def test_grouped_conv_channels_with_zero_weights_are_removed_exactly() -> None:
    model = _randomise_norms(GroupedNet())
    with torch.no_grad():  # one channel of each 2-channel block feeding conv2's 4 groups is dead
        for c in (0, 3, 4, 7):
            model.conv1.weight[c] = 0
            model.conv1.bias[c] = 0
            model.bn1.weight[c] = 0
            model.bn1.bias[c] = 0
    pruned, rep = structured_with_report(model, X, ratio={"conv1": 0.5}, importance="l1")
    assert pruned.conv1.out_channels == 4 and pruned.conv2.in_channels == 4
    torch.testing.assert_close(pruned(X), model(X), atol=1e-5, rtol=1e-4)
    # a wrong per-group slice would mix the groups' filters: check against a hand-built grouped conv
    keep = torch.tensor([1, 2, 5, 6])
    ref = nn.Conv2d(4, 16, 3, padding=1, groups=4)
    with torch.no_grad():
        # every group had 2 inputs; 1 survives, at local index 1, 0, 1, 0
        ref.weight.copy_(torch.stack([model.conv2.weight[o, [1, 0, 1, 0][o // 4]] for o in range(16)]).unsqueeze(1))
        ref.bias.copy_(model.conv2.bias)
    h = torch.relu(model.bn1(model.conv1(X)))[:, keep]
    torch.testing.assert_close(pruned.conv2(h), ref(h))


class MHANet(nn.Module):
    """Token embedding -> residual nn.MultiheadAttention -> linear head (no layer norm: exact removal)."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.fc(h.mean(1))


def test_mha_whole_heads_go_with_the_embedding_channels_exactly() -> None:
    torch.manual_seed(0)
    model = MHANet().eval()
    x = torch.randn(2, 5, 6)
    dead_chan = torch.tensor([0, 1, 4, 6, 9, 10, 13, 15])
    with torch.no_grad():
        model.embed.weight[dead_chan] = 0
        model.embed.bias[dead_chan] = 0
        model.attn.in_proj_weight[:, dead_chan] = 0
        model.attn.out_proj.weight[dead_chan] = 0
        model.attn.out_proj.bias[dead_chan] = 0
        model.fc.weight[:, dead_chan] = 0
        for head in (1, 2):  # q, k and v rows of heads 1 and 2, and their out_proj columns
            for part in range(3):
                rows = slice(part * 16 + head * 4, part * 16 + head * 4 + 4)
                model.attn.in_proj_weight[rows] = 0
                model.attn.in_proj_bias[rows] = 0
            model.attn.out_proj.weight[:, head * 4:head * 4 + 4] = 0
    pruned, rep = structured_with_report(model, x, ratio=0.5, importance="l1")
    attn = pruned.attn
    assert type(attn) is nn.MultiheadAttention
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (8, 2, 4)
    assert tuple(attn.in_proj_weight.shape) == (24, 8) and tuple(attn.out_proj.weight.shape) == (8, 8)
    assert [(h.before, h.after) for h in rep.heads] == [(4, 2)]
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-4)


def test_mha_fed_by_the_model_input_is_left_intact_with_a_reason() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attn(x, x, x)[0])

    pruned, rep = structured_with_report(Raw().eval(), torch.randn(1, 3, 8), ratio=0.5)
    assert pruned.attn.num_heads == 2 and not rep.heads
    assert "model input" in rep.skipped["attn"]


def test_vit_embedding_dim_is_pruned_through_norms_tokens_and_positions() -> None:
    model = create("vit").eval()
    pruned, _ = structured_with_report(model, X, ratio=0.5)
    assert pruned.embed.out_channels == 32 and pruned.norm.normalized_shape == (32,)
    assert tuple(pruned.cls.shape) == (1, 1, 32) and tuple(pruned.pos.shape) == (1, 17, 32)
    blk = pruned.blocks[0]
    assert blk.norm1.weight.shape == (32,) and blk.attn.qkv.in_features == 32 and blk.attn.proj.out_features == 32
    assert blk.attn.heads == 2 and blk.attn.qkv.out_features == 3 * 2 * 16
    assert pruned(X).shape == (2, 10)


def test_layer_norm_dims_follow_the_kept_features() -> None:
    """A pruned layer norm equals the original applied to the kept features only."""
    model = create("transformer").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    pruned, _ = structured_with_report(model, X, ratio=0.5)
    _, graph = build_graph(model, X)
    stream = next(ms for ms in graph.groups().values() if any(m.module == "embed" for m in ms))
    assert {"blocks.0.norm1", "blocks.1.norm2", "norm", "blocks.0.attn", "pos"} <= {m.module for m in stream}
    keep = torch.stack([(model.norm.weight == w).nonzero()[0, 0] for w in pruned.norm.weight])
    assert keep.numel() == 16 and bool((keep.diff() > 0).all())
    torch.testing.assert_close(pruned.pos, model.pos[..., keep])
    h = torch.randn(2, 5, 32)
    ref = nn.functional.layer_norm(h[..., keep], (16,), model.norm.weight[keep], model.norm.bias[keep])
    torch.testing.assert_close(pruned.norm(h[..., keep]), ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnext", "transformer", "vit"])
def test_artifact_and_onnx_round_trips(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _randomise_norms(create(name))
    pruned, _ = structured_with_report(model, X, ratio=0.5, round_to=2)
    path = tmp_path / f"{name}.dsk"
    artifact.save(pruned, path)
    loaded = artifact.load(path).eval()
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())
    torch.testing.assert_close(loaded(X), pruned(X), atol=1e-6, rtol=1e-5)
    buf = io.BytesIO()
    torch.onnx.export(pruned, (X,), buf, input_names=["x"], output_names=["y"], dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": X.numpy()})
    np.testing.assert_allclose(y, pruned(X).detach().numpy(), atol=1e-4, rtol=1e-4)
