"""Compact quantized artifacts (bundle, fpack floats, range-coded codes, dictionary meta): loading gives
outputs equal to the in-memory quantized model for every scheme; old layouts still load; corruption and
newer versions give clear errors; small models get much smaller files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

import deepshrink
import deepshrink.quantize as Q
from deepshrink.artifact import tensors as T
from deepshrink.artifact.model_io import encode_model, save
from deepshrink.artifact.quantized import BUNDLE, encode_quant, save_quantized
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError, CorruptArtifactError, UnsupportedVersionError
from deepshrink.models import create
from deepshrink.quantize.modules import quantized_weight
from deepshrink.quantize.qat import freeze

CONFIGS = {
    **{f"int{b}": Q.IntWeightConfig(bits=b, symmetric=b > 1) for b in range(1, 9)},
    "int4 affine": Q.IntWeightConfig(bits=4, symmetric=False),
    "int8 per-tensor": Q.IntWeightConfig(bits=8, granularity="per_tensor"),
    "int3 per-group": Q.IntWeightConfig(bits=3, granularity="per_group", group_size=5, symmetric=False),
    "binary": Q.BinaryConfig(),
    "ternary": Q.TernaryConfig(),
    "pow2": Q.PowerOfTwoConfig(bits=4),
    "kmeans": Q.KMeansConfig(bits=3),
    "fixed point": Q.FixedPointConfig(bits=8, frac_bits=6),
}


def _cnn1d() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("cnn1d").eval()
    with torch.no_grad():  # trained-like: heavy-tailed weights, small biases
        for p in model.parameters():
            p.copy_(torch.distributions.Laplace(0.0, 0.05).sample(p.shape))
    return model


@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_load_equals_in_memory_quantized_model(tmp_path, label: str) -> None:
    q = Q.quantize(_cnn1d(), CONFIGS[label])
    save_quantized(q, tmp_path / "q.dsk")
    x = torch.randn(6, 40)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "q.dsk")(x), q(x))
    box = container.read_container(tmp_path / "q.dsk")
    assert box.version == 2 and BUNDLE in box.blobs  # k-means weights stay codebook-coded blobs


def test_small_model_file_is_below_packed_codes_plus_raw_floats(tmp_path) -> None:
    model = _cnn1d()
    fp32 = save(model, tmp_path / "f.dsk").nbytes
    for bits in (8, 4):
        q = Q.quantize(model, Q.IntWeightConfig(bits=bits))
        n = save_quantized(q, tmp_path / "q.dsk").nbytes
        weights = sum(m.weight.numel() for m in (q.conv1, q.conv2, q.conv3, q.fc))
        floats = sum(m.bias.numel() + m.weight.shape[0] for m in (q.conv1, q.conv2, q.conv3, q.fc))
        uncompressed = weights * bits // 8 + 4 * floats  # packed codes, fp32 scales and biases, no metadata
        assert n < uncompressed, (bits, n, uncompressed)
        assert n < fp32 * bits / 32 + 4 * floats


def test_every_arith_choice_is_recorded_and_exact() -> None:
    q = freeze(Q.quantize(_cnn1d(), Q.IntWeightConfig(bits=4, symmetric=False)))
    for module in (q.conv2, q.conv3, q.fc):
        qw = quantized_weight(module)
        enc = encode_quant(qw, "k")
        assert enc.meta["qcode"] == "arith" and "qc" not in enc.meta  # centered on per-channel zero points
        assert enc.meta["sfmt"] == "fpack" and len(enc.blobs["k.s"]) < 4 * qw.codes.shape[0]
        assert torch.equal(T.decode_tensor({**enc.meta, "shape": list(qw.shape)}, tuple(qw.shape), enc.blobs,
                                           "w"), qw.dequantized())


def _old_layout(model: torch.nn.Module) -> tuple[dict, dict[str, bytes]]:
    """The layout written before compaction: version 1, separate blobs, raw float32 scales and biases,
    explicit grouped shapes, packed codes."""
    model = freeze(model)
    meta, blobs, _ = encode_model(model)
    for name in ("conv1", "conv2", "conv3", "fc"):
        qw = quantized_weight(getattr(model, name))
        old = meta["tensors"][f"{name}.weight"]
        blobs.pop(old["blob"])
        c, g, k = qw.codes.shape
        key = f"{old['blob']}q"
        blobs[f"{key}.q"] = np.asarray(qw.codes.numpy().ravel(), dtype=np.uint8).tobytes()
        blobs[f"{key}.s"] = T._raw(qw.scale.expand(c, g, 1).reshape(-1), "float32")
        blobs[f"{key}.z"] = T._raw(qw.zero_point.expand(c, g, 1).reshape(-1), "float32")
        meta["tensors"][f"{name}.weight"] = {"enc": "quant", "bits": qw.bits, "scheme": qw.scheme,
                                             "cshape": [c, g, k], "qblob": f"{key}.q", "sblob": f"{key}.s",
                                             "zblob": f"{key}.z", "shape": list(qw.shape)}
    return meta, blobs


def test_old_version1_layout_still_loads(tmp_path) -> None:
    q = Q.quantize(_cnn1d(), Q.IntWeightConfig(bits=8))
    meta, blobs = _old_layout(q)
    container.write_container(tmp_path / "old.dsk", meta, blobs)
    raw = (tmp_path / "old.dsk").read_bytes()
    assert struct.unpack("<H", raw[8:10])[0] == 1
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "old.dsk")(x), q(x))


def test_version1_reader_refuses_new_file_with_a_version_error(tmp_path, monkeypatch) -> None:
    save_quantized(Q.quantize(_cnn1d(), Q.IntWeightConfig(bits=4)), tmp_path / "q.dsk")
    monkeypatch.setattr(container, "FORMAT_VERSION", 1)  # what an older deepshrink checks
    with pytest.raises(UnsupportedVersionError, match="version 2 is newer"):
        deepshrink.load(tmp_path / "q.dsk")


def test_truncated_and_flipped_files_are_artifact_errors(tmp_path) -> None:
    save_quantized(Q.quantize(_cnn1d(), Q.IntWeightConfig(bits=8)), tmp_path / "q.dsk")
    data = (tmp_path / "q.dsk").read_bytes()
    bad = tmp_path / "bad.dsk"
    for cut in (0, 10, 56, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptArtifactError):
            deepshrink.load(bad)
    for pos in (60, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError):
            deepshrink.load(bad)


def test_resealed_bad_slices_and_streams_are_corrupt(tmp_path) -> None:
    save_quantized(Q.quantize(_cnn1d(), Q.IntWeightConfig(bits=8)), tmp_path / "q.dsk")
    box = container.read_container(tmp_path / "q.dsk")
    w = box.meta["tensors"]["conv2.weight"]
    assert w["qcode"] == "arith"
    bundle = box.blobs[BUNDLE]
    cases = [({"at": [0, len(bundle) + 1]}, bundle), ({"at": [-1, 3]}, bundle), ({"at": "x"}, bundle),
             ({"qcode": "lzma"}, bundle), ({"sfmt": "bf16"}, bundle), ({"qc": 999}, bundle),
             # the same slice copied to the end of the bundle with bytes after its range-coded codes
             ({"at": [len(bundle), w["at"][1] + 6]},
              bundle + bundle[w["at"][0]:w["at"][0] + w["at"][1]] + b"\x01\x02\x03\x04\x05\x06")]
    for change, blob in cases:
        meta = {**box.meta, "tensors": {**box.meta["tensors"], "conv2.weight": {**w, **change}}}
        path = tmp_path / "bad.dsk"
        container.write_container(path, meta, {BUNDLE: blob}, compact=True)
        with pytest.raises(CorruptArtifactError):
            deepshrink.load(path)
    # control: the copied slice without the extra bytes is valid and gives the same weights
    meta = {**box.meta, "tensors": {**box.meta["tensors"], "conv2.weight": {**w, "at": [len(bundle), w["at"][1]]}}}
    container.write_container(tmp_path / "copy.dsk", meta,
                              {BUNDLE: bundle + bundle[w["at"][0]:w["at"][0] + w["at"][1]]}, compact=True)
    assert torch.equal(deepshrink.load(tmp_path / "copy.dsk").conv2.weight,
                       deepshrink.load(tmp_path / "q.dsk").conv2.weight)
