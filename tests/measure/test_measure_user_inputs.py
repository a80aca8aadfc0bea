"""Counts and inputs users hit: a codebook shared across layers, labels of -100, packed sequences, Bilinear."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import TensorDataset

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.factorize import share_codebook
from deepshrink.measure import count_nonzeros, count_params, evaluate, measure_latency
from deepshrink.measure.flops import count_macs


def test_a_codebook_shared_across_layers_keeps_every_layers_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = count_params(m)  # 72 + 36
    share_codebook(m, ["0", "2"], bits=2)
    assert count_params(m) == before == 108
    assert count_nonzeros(m) == sum(int((mod.weight != 0).sum()) + int((mod.bias != 0).sum())
                                    for mod in (m[0], m[2]))


def test_a_label_of_minus_100_is_an_error_not_a_skipped_row():
    m = nn.Linear(4, 3)
    data = TensorDataset(torch.randn(4, 4), torch.tensor([0, 1, 2, -100]))
    with pytest.raises(DataError, match="label -100"):
        evaluate(m, data)


def test_a_packed_sequence_is_one_input():
    lstm = nn.LSTM(3, 5)
    packed = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 3]))
    assert count_macs(lstm, packed) > 0
    assert measure_latency(lstm, packed, warmup=1, repeats=2).median_ms > 0


def test_bilinear_macs_are_counted():
    m = nn.Bilinear(3, 4, 2)
    assert count_macs(m, (torch.randn(6, 3), torch.randn(6, 4))) == 6 * 3 * 4 * 2


def test_latency_names_its_own_argument():
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)
