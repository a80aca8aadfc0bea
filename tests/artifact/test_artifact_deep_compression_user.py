"""The Deep Compression pipeline on a model of the user's own (not from the zoo), with batch norm and fp16
biases: it finishes, its round trip is exact, and its table gives the stored widths."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepshrink.pipelines.deep_compression import DeepCompression, DeepCompressionConfig, LayerSetting
from deepshrink.pipelines.deep_compression import _max_output_diff
from deepshrink.report.deep_compression import layer_rows
from deepshrink.train import TrainConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 32),
                         nn.ReLU(), nn.Linear(32, 4))


def test_deep_compression_of_a_user_model_round_trips_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 4, (128,))
    data = TensorDataset(x, y)
    cfg = DeepCompressionConfig(
        layers={"0": LayerSetting(0.6, 3), "4": LayerSetting(0.66, 8, 8), "6": LayerSetting(1.0, 2)},
        prune_rounds=1, retrain=TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=32),
        cluster_finetune=TrainConfig(epochs=1, lr=1e-4, optimizer="adam", batch_size=32), bias_dtype="float16")
    res = DeepCompression(cfg, progress=False).run(_net(), data, data, x[:2], tmp_path, tag="t")
    assert res.roundtrip_max_abs_diff == 0.0  # batch-norm statistics rounded like the biases
    rows = {r["layer"]: r for r in layer_rows(res)}
    # the 66%-kept Linear is stored as dense codebook ids: 256 values + the zero id -> 9 bits packed
    report = next(t for t in res.stages[1].save_report.tensors if t.name == "4.weight")
    assert report.encoding == "codebook"
    assert rows["4"]["weight_bits_pq"] == 9


def test_a_round_trip_that_gives_nan_where_the_model_does_not_is_not_exact() -> None:
    good = nn.Linear(3, 2)
    bad = nn.Linear(3, 2)
    bad.load_state_dict(good.state_dict())
    with torch.no_grad():
        bad.bias[0] = float("nan")
    data = TensorDataset(torch.randn(4, 3), torch.zeros(4).long())
    assert _max_output_diff(good, good, data) == 0.0
    assert math.isinf(_max_output_diff(good, bad, data))
