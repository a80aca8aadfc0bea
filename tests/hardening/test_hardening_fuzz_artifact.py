"""Property and fuzz tests over the whole model artifact path: save -> load round trips for random tiny
models, and every damaged or hostile file (truncated, bit-flipped, or tampered and re-sealed with a
valid checksum) ends in a DeepShrinkError -- never another exception, a hang or a big allocation."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardening_support as H
from deepshrink.artifact import StoragePolicy, load, save
from deepshrink.artifact.model_io import plain_state
from deepshrink.codec import container, packing
from deepshrink.core.errors import CorruptArtifactError, DeepShrinkError

HERE = Path(__file__).resolve().parent
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow])


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return H.reference_artifacts(tmp_path_factory.mktemp("refs"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scratch") / "x.dsk"


# ---- random valid models round-trip exactly ----------------------------------------------------------

@settings(FAST, max_examples=15)
@given(kind=st.sampled_from(sorted(H.TINY)), seed=st.integers(0, 2**16),
       keep=st.none() | st.floats(0.01, 1.0), bits=st.none() | st.integers(1, 6),
       coding=st.sampled_from(["packed", "huffman", "auto"]), index_bits=st.none() | st.integers(1, 8),
       sparse=st.booleans(), small=st.sampled_from(["float32", "float16"]))
def test_random_models_round_trip_exactly(tmp_path, kind, seed, keep, bits, coding, index_bits, sparse,
                                          small):
    model = H.tiny_model(kind, seed, keep=keep, bits=bits)
    policy = StoragePolicy(coding=coding, index_bits=index_bits, sparse=sparse, small_dtype=small)
    path = tmp_path / f"{kind}-{seed}.dsk"
    save(model, path, policy)
    first = path.read_bytes()
    loaded = load(path)
    state = loaded.state_dict()
    for name, (t, _) in plain_state(model).items():
        want = t.half().to(t.dtype) if small == "float16" and t.dim() <= 1 and t.is_floating_point() else t
        assert torch.equal(state[name], want), name
    save(model, path, policy)
    assert path.read_bytes() == first  # saving is deterministic


# ---- damaged files: every truncation, every bit flip, random damage ----------------------------------

def test_every_truncation_and_every_bit_flip_is_rejected(refs, scratch):
    data = refs["sparse_cb_huff"]
    for n in range(len(data)):
        with pytest.raises(CorruptArtifactError):
            container.decode_container(data[:n])
    buf = bytearray(data)
    for bit in range(8 * len(data)):
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DeepShrinkError):
            container.decode_container(bytes(buf))
        buf[bit // 8] ^= 1 << (bit % 8)
    # the file path too, on a sample (the full sweep is benchmarks/fuzz_artifact.py)
    rng = random.Random(0)
    for n in rng.sample(range(len(data)), 40):
        assert H.outcome(data[:n], scratch) == "rejected"
    for bit in rng.sample(range(8 * len(data)), 40):
        buf[bit // 8] ^= 1 << (bit % 8)
        assert H.outcome(bytes(buf), scratch) == "rejected"
        buf[bit // 8] ^= 1 << (bit % 8)


@settings(FAST, max_examples=200)
@given(name=st.sampled_from(["dense", "sparse_raw", "sparse_cb_huff", "codebook", "cnn_fp16"]),
       rnd=st.randoms(use_true_random=False))
def test_random_byte_damage_is_rejected(refs, scratch, name, rnd):
    damaged = H.mutate_raw(refs[name], rnd)
    if damaged != refs[name]:
        assert H.outcome(damaged, scratch) == "rejected"


@settings(FAST, max_examples=300)
@given(name=st.sampled_from(["dense", "sparse_raw", "sparse_cb_huff", "codebook", "cnn_fp16"]),
       rnd=st.randoms(use_true_random=False))
def test_tampered_files_with_valid_checksums_never_crash(refs, scratch, name, rnd):
    """Structural checks, not the checksum, must stop these: the outcome is a model or a DeepShrinkError."""
    assert H.outcome(H.mutate_resealed(refs[name], rnd), scratch) in ("loaded", "rejected")


# ---- hand-made hostile files (valid checksum, hostile structure) ------------------------------------

def _tamper_meta(data: bytes, edit) -> bytes:
    box = container.decode_container(data)
    meta = json.loads(json.dumps(box.meta))
    edit(meta)
    return container.encode_container(meta, box.blobs)


def _sparse_name(data: bytes, key: str, value: str) -> str:
    return next(n for n, t in container.decode_container(data).meta["tensors"].items() if t.get(key) == value)


def _huffman_stream(lengths: list[int], count: int, nbits: int) -> bytes:
    import struct
    table = packing.pack_bits(np.asarray(lengths), 5)
    return struct.pack("<BBIQQI", 1, 0, len(lengths), count, nbits, len(lengths)) + table + b"\0" * 8


def test_hostile_architecture_records_are_refused(refs, scratch):
    base = refs["sparse_raw"]  # lenet300
    cases = {
        "huge shapes": {"in_features": 1 << 20, "hidden": [1 << 20, 8], "num_classes": 3},
        "wrong arity": {"hidden": [1, 2, 3]},
        "negative width": {"in_features": -5},
        "string width": {"in_features": "16"},
        "too long": {"hidden": [1] * 10_000},
    }
    for what, kwargs in cases.items():
        tampered = _tamper_meta(base, lambda m, kw=kwargs: m["arch"].update(kwargs=kw))
        scratch.write_bytes(tampered)
        with pytest.raises(CorruptArtifactError):
            load(scratch)
    for zoo in ("os.system", "lenet5x", "__import__", ""):
        scratch.write_bytes(_tamper_meta(base, lambda m, z=zoo: m["arch"].update(zoo=z)))
        with pytest.raises(CorruptArtifactError, match="unknown architecture"):
            load(scratch)


def test_hostile_tensor_records_are_refused(refs, scratch):
    cb = refs["codebook"]
    name = _sparse_name(cb, "enc", "codebook")
    edits = {
        "unknown encoding": lambda m: m["tensors"][name].update(enc="pickle"),
        "unknown coding": lambda m: m["tensors"][name].update(vcode="lzma"),
        "alphabet past codebook": lambda m: m["tensors"][name].update(alpha=m["tensors"][name]["k"] + 5),
        "huge k": lambda m: m["tensors"][name].update(k=2**62),
        "negative k": lambda m: m["tensors"][name].update(k=-1),
        "missing blob": lambda m: m["tensors"][name].update(vblob="nope"),
        "huge shape": lambda m: m["tensors"][name].update(shape=[2**40, 2**40]),
    }
    for what, edit in edits.items():
        scratch.write_bytes(_tamper_meta(cb, edit))
        with pytest.raises(CorruptArtifactError):
            load(scratch)
    sp = refs["sparse_raw"]
    sname = _sparse_name(sp, "enc", "sparse")
    for edit in (lambda m: m["tensors"][sname].update(ibits=0), lambda m: m["tensors"][sname].update(nnz=-3),
                 lambda m: m["tensors"][sname].update(nidx=2**60),
                 lambda m: m["tensors"][sname].update(dtype=[1])):
        scratch.write_bytes(_tamper_meta(sp, edit))
        with pytest.raises(DeepShrinkError):
            load(scratch)


def test_indices_past_the_end_of_a_layer_are_refused(refs, scratch):
    box = container.decode_container(refs["sparse_raw"])
    name = _sparse_name(refs["sparse_raw"], "enc", "sparse")
    t = box.meta["tensors"][name]
    n = int(np.prod(t["shape"]))
    esc = (1 << t["ibits"]) - 1
    count = n // (esc - 1) + 2  # steps of esc-1 positions: runs past the end
    meta = json.loads(json.dumps(box.meta))
    meta["tensors"][name].update(icode="packed", nidx=count, nnz=min(count, n))
    blobs = dict(box.blobs)
    blobs[t["iblob"]] = packing.pack_bits(np.full(count, esc - 2), t["ibits"])
    scratch.write_bytes(container.encode_container(meta, blobs))
    with pytest.raises(CorruptArtifactError, match="position|non-zeros"):
        load(scratch)


def test_non_prefix_free_huffman_table_is_refused(refs, scratch):
    box = container.decode_container(refs["codebook"])
    name = _sparse_name(refs["codebook"], "enc", "codebook")
    t = box.meta["tensors"][name]
    n = int(np.prod(t["shape"]))
    meta = json.loads(json.dumps(box.meta))
    meta["tensors"][name].update(vcode="huffman")
    blobs = dict(box.blobs)
    blobs[t["vblob"]] = _huffman_stream([1] * t["alpha"], n, n)  # Kraft sum alpha/2 > 1
    scratch.write_bytes(container.encode_container(meta, blobs))
    with pytest.raises(CorruptArtifactError, match="(?i)kraft|prefix"):
        load(scratch)


def test_hostile_blob_tables_are_refused(refs, scratch):
    doc, blobs = H.split(refs["dense"])
    entries = doc["blobs"]
    assert len(entries) >= 2
    variants = {
        "negative offset": lambda e: e[0].update(offset=-8),
        "overlap": lambda e: e[1].update(offset=e[0]["offset"] + 1),
        "past the end": lambda e: e[0].update(length=len(blobs) + 1),
        "huge length": lambda e: e[0].update(length=2**63),
        "float offset": lambda e: e[0].update(offset=0.5),
        "duplicate": lambda e: e[1].update(name=e[0]["name"]),
    }
    for what, edit in variants.items():
        tampered = json.loads(json.dumps(doc))
        edit(tampered["blobs"])
        with pytest.raises(CorruptArtifactError):
            container.decode_container(H.reseal(tampered, blobs))
        assert H.outcome(H.reseal(tampered, blobs), scratch) == "rejected", what


def test_meta_bombs_are_refused_without_building_them(refs):
    """A 293 KB file whose meta inflated to 64 MiB of '[],' used to make json.loads build 21 M lists
    (~1.7 GB, ~60 s); now the inflation ratio and a JSON container count are capped before parsing."""
    _, blobs = H.split(refs["dense"])
    lists = b"[" + b"[]," * 1_000_000 + b"[]]"  # 3 MB inflated from ~3 KB: past the 64x ratio cap
    spaces = b" " * (container.MAX_META_BYTES + 1)  # past the absolute cap
    deep = b"[" * 100_000 + b"]" * 100_000
    flat = b"[" + b"[]," * (container.MAX_JSON_CONTAINERS + 1) + b"[]]"  # stored as is: container cap
    cases = [(lists, True), (spaces, True), (deep, True), (deep, False), (flat, False)]
    for raw, compress in cases:
        data = H.reseal(None, blobs, compress=compress, raw_meta=raw, level=1)
        tracemalloc.start()
        try:
            with pytest.raises(CorruptArtifactError):
                container.decode_container(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 3 * len(raw) + (8 << 20), f"{peak} bytes traced for a {len(raw)}-byte meta section"


# ---- bounded memory and time: a fuzz run under an address-space cap, in a subprocess ----------------

def test_fuzzing_under_a_memory_cap_and_alarm(tmp_path):
    """200 damaged or tampered inputs under RLIMIT_AS (current + 768 MiB) with a 5 s alarm each:
    no MemoryError, no hang."""
    script = textwrap.dedent(f"""
        import random, resource, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(HERE)!r})
        import torch
        torch.set_num_threads(1)
        import hardening_support as H
        folder = Path({str(tmp_path)!r})
        refs = H.reference_artifacts(folder)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.RLIM_INFINITY))
        def hang(*_):
            raise TimeoutError("input took over 5 s")
        signal.signal(signal.SIGALRM, hang)
        rng = random.Random(1234)
        for i in range(200):
            name = rng.choice(sorted(refs))
            data = H.mutate_resealed(refs[name], rng) if i % 2 else H.mutate_raw(refs[name], rng)
            signal.alarm(5)
            H.outcome(data, folder / "x.dsk")
            signal.alarm(0)
        big = {{"in_features": 1 << 16, "hidden": [1 << 16, 1 << 16], "num_classes": 3}}
        doc, blobs = H.split(refs["sparse_raw"])
        doc["meta"]["arch"]["kwargs"] = big
        assert H.outcome(H.reseal(doc, blobs), folder / "x.dsk") == "rejected"
        print("ok")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_every_registered_zoo_model_rebuilds_through_the_guarded_loader(tmp_path):
    """The loader sizes architectures on the meta device first: every zoo model must survive that."""
    from deepshrink.models import create
    from deepshrink.models.zoo import MODELS

    from deepshrink.artifact.model_io import _rebuild

    for name in sorted(MODELS.names()):
        torch.manual_seed(0)
        model = create(name).eval()
        assert isinstance(_rebuild(name, create(name)._deepshrink_arch["kwargs"], name), torch.nn.Module)
        if sum(t.numel() for t in model.state_dict().values()) > 100_000:
            continue  # the big ones only through _rebuild: keep the suite fast
        save(model, tmp_path / f"{name}.dsk")
        loaded = load(tmp_path / f"{name}.dsk").state_dict()
        for key, (t, _) in plain_state(model).items():
            assert torch.equal(loaded[key], t), f"{name}: {key}"


def test_numbers_too_large_for_a_float_are_refused(refs, scratch):
    """``1e999`` is valid JSON that Python reads as infinity: every ``int()`` of it would raise OverflowError."""
    sp = refs["sparse_raw"]
    doc, blobs = H.split(sp)
    raw = json.dumps(doc, separators=(",", ":")).encode()
    name = _sparse_name(sp, "enc", "sparse")
    for key in ("nnz", "nidx", "ibits"):
        value = doc["meta"]["tensors"][name][key]
        hostile = raw.replace(f'"{key}":{value}'.encode(), f'"{key}":1e999'.encode(), 1)
        assert hostile != raw
        scratch.write_bytes(H.reseal(None, blobs, raw_meta=hostile))
        with pytest.raises(CorruptArtifactError, match="out of range"):
            load(scratch)


def test_inspect_of_a_tampered_unsealed_file_is_a_clean_error(refs, scratch):
    from deepshrink.artifact.inspect import describe

    sp = refs["sparse_raw"]
    doc, blobs = H.split(sp)
    name = _sparse_name(sp, "enc", "sparse")
    for value in (["a", 64], [3.5e300, 64]):
        doc["meta"]["tensors"][name]["shape"] = value
        sealed = H.reseal(doc, blobs)
        broken = sealed[:40] + bytes([sealed[40] ^ 0xFF]) + sealed[41:]  # the stored digest no longer matches
        scratch.write_bytes(broken)
        with pytest.raises(CorruptArtifactError):
            describe(scratch)
