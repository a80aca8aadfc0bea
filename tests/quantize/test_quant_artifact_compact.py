"""Compact quantized artifacts: constant zero points live in the metadata, skewed codes are Huffman-coded;
both are lossless, older files (zero-point blob, packed codes) still decode, bad values are corrupt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepshrink
import deepshrink.quantize as Q
from deepshrink.artifact import tensors as T
from deepshrink.artifact.quantized import decode_quant, encode_quant, save_quantized
from deepshrink.codec import container
from deepshrink.core.errors import CorruptArtifactError
from deepshrink.models import create
from deepshrink.quantize.modules import quantized_weight


def _model(laplace: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create("mlp", in_features=256, hidden=[128], num_classes=10).eval()
    if laplace:  # trained-like, heavy-tailed weights: most int8 codes sit near the zero point
        with torch.no_grad():
            for lin in (m.layers.fc1, m.layers.fc2):
                lin.weight.copy_(torch.distributions.Laplace(0.0, 0.02).sample(lin.weight.shape))
    return m


def test_symmetric_zero_point_is_one_metadata_value_and_round_trip_is_exact(tmp_path) -> None:
    q = Q.quantize(_model(False), Q.IntWeightConfig(bits=8))
    save_quantized(q, tmp_path / "q.dsk")
    meta = container.read_container(tmp_path / "q.dsk").meta["tensors"]["layers.fc1.weight"]
    assert meta["zconst"] == 128.0 and "zblob" not in meta
    assert meta.get("qcode", "packed") == "packed"  # uniform init weights: Huffman would not save 5%
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "q.dsk")(x), q(x))


def test_skewed_codes_are_huffman_coded_and_smaller(tmp_path) -> None:
    q = Q.quantize(_model(True), Q.IntWeightConfig(bits=8))
    rep = save_quantized(q, tmp_path / "q.dsk")
    meta = container.read_container(tmp_path / "q.dsk").meta["tensors"]["layers.fc1.weight"]
    assert meta["qcode"] == "huffman"
    codes_bytes = next(r.nbytes for r in rep.tensors if r.name == "layers.fc1.weight")
    assert codes_bytes < 0.95 * (256 * 128 + 128 * 4)  # below packed codes + scales
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "q.dsk")(x), q(x))


def test_older_layout_still_decodes_and_bad_values_are_corrupt() -> None:
    q = Q.quantize(_model(True), Q.IntWeightConfig(bits=4, symmetric=False))
    qw = quantized_weight(q.layers.fc1)
    enc = encode_quant(qw, "k")
    shape = tuple(qw.shape)
    expected = qw.dequantized()
    assert torch.equal(decode_quant(enc.meta, shape, enc.blobs, "w"), expected)
    # the layout written before compaction: packed codes and a zero-point blob even when constant
    sym = quantized_weight(Q.quantize(_model(False), Q.IntWeightConfig(bits=8)).layers.fc1)
    new = encode_quant(sym, "s")
    old_meta = {k: v for k, v in new.meta.items() if k not in ("zconst", "qcode")}
    old_meta["zblob"] = "s.z"
    blobs = dict(new.blobs)
    blobs["s.z"] = T._raw(sym.zero_point.expand(128, 1, 1).reshape(-1), "float32")
    codes = sym.codes.numpy().astype(np.int64).ravel()
    from deepshrink.codec import packing

    blobs["s.q"] = packing.pack_bits(codes, 8)
    assert torch.equal(decode_quant(old_meta, tuple(sym.shape), blobs, "w"), sym.dequantized())
    for bad in ({"zconst": "x"}, {"zconst": float("inf")}, {"qcode": "lz4"}):
        meta = {**new.meta, **bad}
        with pytest.raises(CorruptArtifactError):
            decode_quant(meta, tuple(sym.shape), new.blobs, "w")
    huff = {**enc.meta}
    assert huff["qcode"] == "huffman"
    with pytest.raises(CorruptArtifactError):
        decode_quant(huff, shape, {**enc.blobs, "k.q": enc.blobs["k.q"][:-3]}, "w")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_power_of_two_tables_are_stored_as_one_value_per_row(tmp_path, bits) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 48)).eval()
    q = Q.quantize(model, Q.PowerOfTwoConfig(bits=bits))
    w = quantized_weight(q[0])
    enc = encode_quant(w, "t")
    assert enc.meta.get("pow2") is True and "lblob" not in enc.meta
    assert sum(len(b) for k, b in enc.blobs.items() if k != enc.meta["qblob"]) <= 4 * 96  # one float a row
    back = decode_quant(enc.meta, tuple(w.shape), enc.blobs, "t")
    assert torch.equal(back, q[0].weight)
    save_quantized(q, tmp_path / "p.dsk")
    int_bytes = save_quantized(Q.quantize(model, Q.IntWeightConfig(bits=bits)), tmp_path / "i.dsk").nbytes
    assert (tmp_path / "p.dsk").stat().st_size <= int_bytes * 1.1  # with the whole table: 2.3x at 4 bits
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "p.dsk", model=model)(x), q(x))


def test_a_power_of_two_header_with_one_bit_is_corrupt() -> None:
    torch.manual_seed(0)
    q = Q.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), Q.PowerOfTwoConfig(bits=3))
    w = quantized_weight(q[0])
    enc = encode_quant(w, "t")
    with pytest.raises(CorruptArtifactError):
        decode_quant({**enc.meta, "bits": 1}, tuple(w.shape), enc.blobs, "t")
