"""The artifact container: exact round trips, atomic writes and rejection of every kind of corruption."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

import deepshrink.core.fileio as fileio
from deepshrink.codec.container import (
    FORMAT_VERSION,
    HEADER_NBYTES,
    MAGIC,
    PLAIN_VERSION,
    decode_container,
    encode_container,
    inspect_container,
    read_container,
    write_container,
)
from deepshrink.core.errors import (
    ArtifactError,
    ConfigError,
    CorruptArtifactError,
    UnsupportedVersionError,
)

HEADER = struct.Struct("<8sHHIQ32s")
META = {"model": "lenet", "bits": [4, 5], "ratio": 0.125, "nested": {"ok": True, "none": None}}
BLOBS = {"w1": bytes(range(7)), "empty": b"", "w2": b"\xff\x00" * 5}


def _craft(
    doc: Any, blob_section: bytes, version: int = FORMAT_VERSION, raw_meta: bytes | None = None
) -> bytes:
    """Container bytes with an arbitrary meta document but a *valid* checksum and sizes."""
    meta_bytes = raw_meta if raw_meta is not None else json.dumps(doc).encode("utf-8")
    digest = hashlib.sha256(meta_bytes + blob_section).digest()
    return (
        HEADER.pack(MAGIC, version, 0, len(meta_bytes), len(blob_section), digest) + meta_bytes + blob_section
    )


def _one_line_from(exc: pytest.ExceptionInfo[BaseException], source: str) -> None:
    assert str(exc.value).startswith(source) and "\n" not in str(exc.value)


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "model.dshrink"
    written = write_container(path, META, BLOBS)
    assert written == os.path.getsize(path)
    assert path.read_bytes() == encode_container(META, BLOBS)
    box = read_container(path)
    assert box.meta == META and box.blobs == BLOBS and list(box.blobs) == list(BLOBS)
    assert box.version == PLAIN_VERSION and box.checksum_ok and box.nbytes == written
    assert decode_container(path.read_bytes()) == box
    write_container(path, box.meta, box.blobs)  # re-saving reproduces the same bytes
    assert path.read_bytes() == encode_container(META, BLOBS)


def test_layout_of_header(tmp_path: Path) -> None:
    data = encode_container({"a": 1}, {"x": b"abc"})
    magic, version, flags, meta_len, blob_len, digest = HEADER.unpack(data[:HEADER_NBYTES])
    assert (magic, version, flags, blob_len) == (b"DSHRINK\x00", 1, 0, 3)
    meta = json.loads(data[HEADER_NBYTES : HEADER_NBYTES + meta_len])
    assert meta == {"meta": {"a": 1}, "blobs": [{"name": "x", "offset": 0, "length": 3}]}
    assert digest == hashlib.sha256(data[HEADER_NBYTES:]).digest() and data.endswith(b"abc")


def test_empty_container_and_tuples_become_lists(tmp_path: Path) -> None:
    box = decode_container(encode_container({}, {}))
    assert box.meta == {} and box.blobs == {}
    assert decode_container(encode_container({"shape": (3, 4)}, {})).meta == {"shape": [3, 4]}


def test_every_truncation_is_corrupt(tmp_path: Path) -> None:
    data = encode_container(META, BLOBS)
    for cut in range(len(data)):
        with pytest.raises(CorruptArtifactError):
            decode_container(data[:cut])
    path = tmp_path / "cut.dshrink"
    for cut in (0, HEADER_NBYTES - 1, HEADER_NBYTES, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptArtifactError) as exc:
            read_container(path)
        _one_line_from(exc, str(path))


def test_every_bit_flip_is_detected() -> None:
    data = encode_container({"k": "v"}, {"a": b"\x01\x02\x03", "b": b"\x04"})
    for byte in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[byte] ^= 1 << bit
            with pytest.raises((CorruptArtifactError, UnsupportedVersionError)):
                decode_container(bytes(flipped))


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(CorruptArtifactError, match="trailing"):
        decode_container(encode_container(META, BLOBS) + b"\x00")


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"PK\x03\x04" + encode_container(META, BLOBS)[4:])
    with pytest.raises(CorruptArtifactError, match="not a deepshrink artifact") as exc:
        read_container(path)
    _one_line_from(exc, str(path))


def test_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "new.dshrink"
    path.write_bytes(_craft({"meta": {}, "blobs": []}, b"", version=FORMAT_VERSION + 1))
    with pytest.raises(UnsupportedVersionError, match=r"version 3 .*version 2") as exc:
        read_container(path)
    _one_line_from(exc, str(path))


def test_huge_declared_meta_length_rejected_before_reading(tmp_path: Path) -> None:
    data = bytearray(encode_container(META, BLOBS))
    struct.pack_into("<I", data, 12, 0xFFFFFFFF)
    with pytest.raises(CorruptArtifactError, match="meta length"):
        decode_container(bytes(data))
    data = bytearray(encode_container(META, BLOBS))
    struct.pack_into("<Q", data, 16, 1 << 62)  # absurd blob section: rejected by the size check
    with pytest.raises(CorruptArtifactError, match="truncated"):
        decode_container(bytes(data))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (
            {
                "meta": {},
                "blobs": [{"name": "a", "offset": 0, "length": 4}, {"name": "b", "offset": 2, "length": 4}],
            },
            "overlaps",
        ),
        ({"meta": {}, "blobs": [{"name": "a", "offset": 0, "length": 9}]}, "past the"),
        (
            {
                "meta": {},
                "blobs": [{"name": "a", "offset": 0, "length": 1}, {"name": "a", "offset": 1, "length": 1}],
            },
            "twice",
        ),
        ({"meta": {}, "blobs": [{"name": "a", "offset": -1, "length": 1}]}, "non-negative"),
        ({"meta": {}, "blobs": [{"name": "a", "offset": 0, "length": True}]}, "non-negative"),
        ({"meta": {}, "blobs": [{"name": 3, "offset": 0, "length": 1}]}, "string name"),
        ({"meta": {}, "blobs": [{"name": "a", "offset": 0}]}, "exactly"),
        ({"meta": [], "blobs": []}, "not an object"),
        ({"meta": {}}, "exactly the keys"),
        ([1, 2], "exactly the keys"),
    ],
)
def test_structural_corruption_with_valid_checksum(doc: Any, match: str) -> None:
    data = _craft(doc, b"12345678")
    with pytest.raises(CorruptArtifactError, match=match) as exc:
        decode_container(data, source="crafted")
    _one_line_from(exc, "crafted")


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe{}", b'{"meta": {"x": NaN}, "blobs": []}', b"{" * 5000, b"not json"]
)
def test_meta_not_json_with_valid_checksum(raw: bytes) -> None:
    with pytest.raises(CorruptArtifactError, match="not valid UTF-8 JSON"):
        decode_container(_craft(None, b"", raw_meta=raw))


def test_checksum_mismatch_verify_and_inspect(tmp_path: Path) -> None:
    path = tmp_path / "m.dshrink"
    write_container(path, META, BLOBS)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside blob w2
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum mismatch") as exc:
        read_container(path)
    _one_line_from(exc, str(path))
    box = read_container(path, verify=False)
    assert not box.checksum_ok and box.blobs["w2"][-1] == 0x01
    info = inspect_container(path)
    assert info["checksum_ok"] is False
    assert info["file_bytes"] == os.path.getsize(path)
    assert info["blobs"] == {name: len(b) for name, b in BLOBS.items()}
    assert info["file_bytes"] == HEADER_NBYTES + info["meta_bytes"] + info["blob_section_bytes"]


def test_inspect_raises_on_structural_corruption(tmp_path: Path) -> None:
    path = tmp_path / "bad.dshrink"
    path.write_bytes(_craft({"meta": {}, "blobs": [{"name": "a", "offset": 5, "length": 9}]}, b"12"))
    with pytest.raises(CorruptArtifactError):
        inspect_container(path)
    write_container(path, META, BLOBS)
    assert inspect_container(path)["checksum_ok"] is True


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dshrink"
    with pytest.raises(ArtifactError, match="nope.dshrink") as exc:
        read_container(missing)
    assert not isinstance(exc.value, CorruptArtifactError)
    with pytest.raises(ArtifactError):
        read_container(tmp_path)


@pytest.mark.parametrize(
    ("meta", "blobs", "match"),
    [
        ({"x": object()}, {}, "not JSON-serialisable"),
        ({"x": float("nan")}, {}, "JSON cannot store"),
        ({1: "a"}, {}, "not a string"),
        ({"x": {"y": [1, {2: 3}]}}, {}, "not a string"),
        ({}, {"a": "text"}, "must be bytes"),
        ({}, {7: b""}, "not a string"),
        ([("a", 1)], {}, "must be a dict"),
    ],
)
def test_write_rejects_bad_input(tmp_path: Path, meta: Any, blobs: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        encode_container(meta, blobs)
    with pytest.raises(ConfigError, match=match):
        write_container(tmp_path / "x.dshrink", meta, blobs)
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keep.dshrink"
    write_container(path, META, BLOBS)
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        write_container(path, {"bad": object()}, BLOBS)
    assert path.read_bytes() == before

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(ArtifactError, match="No space left"):
        write_container(path, {"new": 1}, {"b": b"x" * 100})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.dshrink"]  # no temp file left behind
    assert read_container(path).meta == META
