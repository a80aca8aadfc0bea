"""Structured pruning over every zoo architecture: shapes, exactness on zero-importance channels, artifacts,
ONNX, and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink.artifact as artifact
from deepshrink.core.errors import ConfigError, CorruptArtifactError, ModelError
from deepshrink.models import available, create
from deepshrink.prune import structured, unstructured
from deepshrink.prune.graph import build_graph
from deepshrink.prune.structured import structured_with_report

INPUTS = {"cnn1d": (2, 40), "mlp1d": (2, 40)}


def _example(name: str) -> torch.Tensor:
    return torch.randn(*INPUTS.get(name, (2, 1, 28, 28)), generator=torch.Generator().manual_seed(1))


def _trained_like(name: str) -> nn.Module:
    """A zoo model with non-trivial batch-norm statistics (as after training)."""
    torch.manual_seed(0)
    model = create(name)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


# The core zoo: the Hugging Face encoder (registered when deepshrink.transformers is imported, e.g. by a test
# module collected earlier) takes token ids and a mask and has its own head/FFN tests in tests/transformers.
ZOO = [name for name in available() if name != "hf_bert"]


@pytest.mark.parametrize("name", ZOO)
def test_pruned_model_runs_with_the_same_output_shape(name: str) -> None:
    model, x = _trained_like(name), _example(name)
    pruned, rep = structured_with_report(model, x, ratio=0.5)
    assert type(pruned) is type(model)
    assert pruned(x).shape == model(x).shape
    assert rep.params_after <= rep.params_before
    if rep.groups:
        assert rep.params_after < rep.params_before
        assert all(1 <= g.after < g.before or g.before == 1 for g in rep.groups)
    else:
        assert rep.skipped  # nothing prunable is explained
    assert sum(p.numel() for p in model.parameters()) == rep.params_before  # the input is untouched


def _zero_channels(model: nn.Module, x: torch.Tensor) -> tuple[str, int]:
    """Zero every member slice of half the channels of the first free group; returns (producer, count)."""
    _, graph = build_graph(model, x)
    groups = graph.groups()
    # layer norms renormalise over the kept features, so only groups without them are removed exactly
    root, members = next((g, ms) for g, ms in groups.items() if all(
        m.role != "param" and not isinstance(model.get_submodule(m.module), (nn.LayerNorm, nn.MultiheadAttention))
        for m in ms))
    n = graph.lengths[root]
    chans = torch.arange(n)[::2][: n // 2]
    with torch.no_grad():
        for mem in members:
            mod = model.get_submodule(mem.module)
            off = 0
            for s in mem.segs:
                if graph.find(s.gid) == root:
                    pos = (chans.view(-1, 1) * s.rep + torch.arange(s.rep)).flatten() + off
                    if mem.role == "in":
                        mod.weight[:, pos] = 0
                    else:
                        mod.weight[pos] = 0
                        if getattr(mod, "bias", None) is not None:
                            mod.bias[pos] = 0
                off += s.length * s.rep
    producer = next(m.module for m in members if m.role == "out")
    return producer, n // 2


@pytest.mark.parametrize("name", ZOO)
def test_removing_zero_importance_channels_leaves_outputs_unchanged(name: str) -> None:
    model, x = _trained_like(name), _example(name)
    _, graph = build_graph(model, x)
    if not graph.groups():  # e.g. all-grouped convs: nothing may be cut, and the report says why
        pruned, rep = structured_with_report(model, x, ratio=0.5, importance="l1", heads=False)
        assert rep.skipped and sum(g.before - g.after for g in rep.groups) == 0
        torch.testing.assert_close(pruned(x), model(x))
        return
    producer, count = _zero_channels(model, x)
    pruned, rep = structured_with_report(model, x, ratio={producer: 0.5}, importance="l1", heads=False)
    assert sum(g.before - g.after for g in rep.groups) == count
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-4)


def test_removing_zero_heads_leaves_vit_outputs_unchanged() -> None:
    model, x = _trained_like("vit"), _example("vit")
    attn = model.blocks[0].attn
    d = attn.head_dim
    with torch.no_grad():
        for part in range(3):
            attn.qkv.weight[part * attn.heads * d + d: part * attn.heads * d + 2 * d] = 0
            attn.qkv.bias[part * attn.heads * d + d: part * attn.heads * d + 2 * d] = 0
        attn.proj.weight[:, d:2 * d] = 0
    pruned, rep = structured_with_report(model, x, ratio={"blocks.0.attn": 0.25}, importance="l1")
    assert pruned.blocks[0].attn.heads == 3 and pruned.blocks[1].attn.heads == 4
    assert [h.name for h in rep.heads] == ["blocks.0.attn"]
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["cnn", "resnet8", "densenet", "mobilenetv2", "vit", "lenet300"])
def test_artifact_round_trip_rebuilds_the_smaller_architecture(name: str, tmp_path) -> None:
    model, x = _trained_like(name), _example(name)
    pruned = structured(model, x, ratio=0.5)
    path = tmp_path / f"{name}.dsk"
    artifact.save(pruned, path)
    loaded = artifact.load(path)
    torch.testing.assert_close(loaded(x), pruned(x), atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())


def test_hostile_resized_record_is_refused(tmp_path) -> None:
    from deepshrink.codec import container

    model = create("cnn")
    pruned = structured(model, _example("cnn"), ratio=0.5)
    pruned._deepshrink_arch["resized"]["conv1"]["out_channels"] = 10_000  # larger than the architecture
    path = tmp_path / "bad.dsk"
    meta, blobs, _ = artifact.encode_model(pruned)
    container.write_container(path, meta, blobs)
    with pytest.raises(CorruptArtifactError, match="conv1"):
        artifact.load(path)


@pytest.mark.parametrize("name", ["cnn", "resnet8", "densenet", "mobilenetv2", "vit"])
def test_onnx_round_trip_matches(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = _trained_like(name), _example(name)
    pruned = structured(model, x, ratio=0.5)
    buf = io.BytesIO()
    torch.onnx.export(pruned, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, pruned(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_round_to_multiple_and_ignore() -> None:
    model, x = _trained_like("cnn"), _example("cnn")
    pruned, rep = structured_with_report(model, x, ratio=0.6, round_to=8, ignore=["conv1"])
    assert pruned.conv1.out_channels == 32
    assert pruned.conv2.out_channels % 8 == 0 and pruned.conv2.out_channels < 64
    assert any("ignored" in r for r in rep.skipped.values())


def test_global_scope_and_data_driven_criteria() -> None:
    model, x = _trained_like("resnet8"), _example("resnet8")
    y = torch.tensor([1, 2])
    for crit in ("activation", "apoz", "taylor", "random", "l1"):
        pruned = structured(model, x, ratio=0.5, importance=crit, calibration=[(x, y)], global_scope=True)
        assert pruned(x).shape == (2, 10)


def test_nearly_full_ratio_never_leaves_zero_channels() -> None:
    model, x = _trained_like("cnn"), _example("cnn")
    pruned = structured(model, x, ratio=0.99)
    assert pruned.conv1.out_channels >= 1 and pruned.fc1.out_features >= 1


@pytest.mark.parametrize("bad", [1.0, -0.2, float("nan")])
def test_bad_ratio_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        structured(create("cnn"), _example("cnn"), ratio=bad)


def test_bad_ignore_pattern_untraceable_and_masked_models() -> None:
    with pytest.raises(ConfigError, match="'conv9'"):
        structured(create("cnn"), _example("cnn"), ignore=["conv9"])

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if float(x.sum()) > 1e9 else self.fc(x) * 2

    with pytest.raises(ModelError, match="Untraceable"):
        structured(Untraceable(), torch.randn(1, 4))
    masked = create("lenet300")
    unstructured(masked, 0.5)
    with pytest.raises(ModelError, match="remove_masks"):
        structured(masked, _example("lenet300"))


@pytest.mark.parametrize("size", [8, 28])
def test_vision_zoo_models_fit_both_image_sizes(size: int) -> None:
    x = torch.randn(2, 1, size, size)
    extra = {"cnn": {"image_size": size}, "vit": {"image_size": size, "patch": 4 if size == 8 else 7}}
    for name in ("cnn", "resnet8", "densenet", "mobilenetv2", "vit"):
        assert create(name, **extra.get(name, {}))(x).shape == (2, 10)
