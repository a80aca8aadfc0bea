import json
import os
import struct

import pytest
import torch

import deepshrink
from deepshrink.artifact import StoragePolicy, encode_model, load, save
from deepshrink.codec import container
from deepshrink.core.errors import ArtifactError, CorruptArtifactError, DeepShrinkError, UnsupportedVersionError
from deepshrink.models import create
from deepshrink.prune.masks import remove_masks
from deepshrink.prune.unstructured import prune_layer
from deepshrink.quantize.kmeans import share_weights

X = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _compressed(name="lenet300", keep=0.1, bits=4):
    torch.manual_seed(0)
    model = create(name).eval()
    for n in ("fc1", "fc2"):
        prune_layer(getattr(model, n), keep)
    remove_masks(model)
    for n in ("fc1", "fc2"):
        share_weights(getattr(model, n), bits)
    return model


def _same_state(a, b):
    sa = {k: v for k, v in deepshrink.artifact.model_io.plain_state(a).items()}
    sb = b.state_dict()
    assert set(sa) == set(sb)
    for k, (t, _) in sa.items():
        assert torch.equal(t, sb[k]), k


@pytest.mark.parametrize("coding", ["packed", "huffman", "auto"])
def test_compressed_model_round_trips_bit_exact(tmp_path, coding):
    model = _compressed()
    rep = save(model, tmp_path / "m.dsk", StoragePolicy(coding=coding))
    assert rep.nbytes == os.path.getsize(tmp_path / "m.dsk")
    loaded = load(tmp_path / "m.dsk")
    _same_state(model, loaded)
    assert torch.equal(model(X), loaded(X))
    assert not any("parametrizations" in k for k in loaded.state_dict())


def test_dense_and_pruned_models_round_trip(tmp_path):
    torch.manual_seed(1)
    dense = create("lenet5").eval()
    save(dense, tmp_path / "d.dsk")
    assert torch.equal(dense(X), load(tmp_path / "d.dsk")(X))
    prune_layer(dense.fc1, 0.05)
    remove_masks(dense)
    rep = save(dense, tmp_path / "p.dsk", StoragePolicy(index_bits=5))
    fc1 = next(t for t in rep.tensors if t.name == "fc1.weight")
    assert fc1.encoding == "sparse" and fc1.index_bits == 5 and fc1.nnz == 20_000
    assert torch.equal(dense(X), load(tmp_path / "p.dsk")(X))


def test_sparse_storage_is_smaller_than_dense(tmp_path):
    model = _compressed(keep=0.05, bits=4)
    dense = save(model, tmp_path / "a.dsk", StoragePolicy(sparse=False, coding="packed")).nbytes
    sparse = save(model, tmp_path / "b.dsk", StoragePolicy(coding="auto")).nbytes
    assert sparse < dense


def test_float16_biases_halve_their_bytes(tmp_path):
    model = _compressed()
    r32 = save(model, tmp_path / "a.dsk", StoragePolicy(small_dtype="float32"))
    r16 = save(model, tmp_path / "b.dsk", StoragePolicy(small_dtype="float16"))
    b32 = {t.name: t.nbytes for t in r32.tensors}
    b16 = {t.name: t.nbytes for t in r16.tensors}
    assert b16["fc1.bias"] * 2 == b32["fc1.bias"] == 4 * 300


def test_deepshrink_top_level_save_and_load(tmp_path):
    model = _compressed()
    deepshrink.save(model, tmp_path / "m.dsk")
    assert torch.equal(model(X), deepshrink.load(tmp_path / "m.dsk")(X))


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.dsk"
    save(_compressed(), path)
    return path


def test_every_truncation_is_detected(good_file, tmp_path):
    data = good_file.read_bytes()
    bad = tmp_path / "bad.dsk"
    for cut in [0, 1, 7, 8, 55, 56, 57, len(data) // 2, len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptArtifactError):
            load(bad)


def test_bit_flips_are_detected(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    bad = tmp_path / "bad.dsk"
    for pos in range(0, len(data), max(1, len(data) // 97)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        with pytest.raises(DeepShrinkError):
            load(bad)


def test_wrong_magic_and_newer_version(good_file, tmp_path):
    data = good_file.read_bytes()
    bad = tmp_path / "bad.dsk"
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(CorruptArtifactError, match="not a deepshrink artifact"):
        load(bad)
    bad.write_bytes(data[:8] + struct.pack("<H", 99) + data[10:])
    with pytest.raises(UnsupportedVersionError, match="99"):
        load(bad)


def _rewrite(path, mutate):
    box = container.read_container(path)
    meta = json.loads(json.dumps(box.meta))
    mutate(meta)
    container.write_container(path, meta, box.blobs)


def test_metadata_naming_an_unknown_layer_or_architecture_is_refused(good_file):
    _rewrite(good_file, lambda m: m["tensors"].__setitem__("evil.weight", m["tensors"]["fc1.bias"]))
    with pytest.raises(CorruptArtifactError, match="unknown"):
        load(good_file)


def test_architecture_is_never_imported_from_the_file(good_file):
    _rewrite(good_file, lambda m: m.__setitem__("arch", {"zoo": "os:system", "kwargs": {"command": "touch x"}}))
    with pytest.raises(CorruptArtifactError, match="unknown architecture"):
        load(good_file)


def test_shape_mismatch_is_refused(good_file):
    _rewrite(good_file, lambda m: m["tensors"]["fc3.bias"].__setitem__("shape", [11]))
    with pytest.raises(CorruptArtifactError, match="wrong shape"):
        load(good_file)


def test_sparse_count_mismatch_is_refused(good_file):
    def bump(m):
        m["tensors"]["fc1.weight"]["nnz"] += 1
    _rewrite(good_file, bump)
    with pytest.raises(CorruptArtifactError, match="fc1.weight"):
        load(good_file)


def test_failed_save_leaves_the_old_file_intact(good_file, monkeypatch):
    before = good_file.read_bytes()
    model = _compressed(keep=0.5)

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ArtifactError, match="No space left"):
        save(model, good_file)
    monkeypatch.undo()
    assert good_file.read_bytes() == before
    assert [p.name for p in good_file.parent.iterdir()] == [good_file.name]


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        save(_compressed(), tmp_path / "missing" / "m.dsk")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        load(tmp_path / "nope.dsk")


def test_same_model_gives_identical_bytes(tmp_path):
    model = _compressed()
    save(model, tmp_path / "a.dsk")
    save(model, tmp_path / "b.dsk")
    assert (tmp_path / "a.dsk").read_bytes() == (tmp_path / "b.dsk").read_bytes()


def test_encode_model_reports_streams():
    meta, blobs, reports = encode_model(_compressed(), StoragePolicy(coding="huffman"))
    fc1 = next(r for r in reports if r.name == "fc1.weight")
    assert fc1.weight_bits == 4
    assert set(fc1.streams) == {"index", "values", "codebook"}
    assert fc1.nbytes == sum(s.nbytes for s in fc1.streams.values())
    assert meta["format"] == "deepshrink.model"
