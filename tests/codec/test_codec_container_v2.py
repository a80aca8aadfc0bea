"""Container format version 2: dictionary-compressed meta written only on request and only when smaller;
version 1 files and readers keep working as before; bad flag combinations and bombs are corrupt."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from deepshrink.codec import container
from deepshrink.codec.container import decode_container, encode_container
from deepshrink.core.errors import CorruptArtifactError, UnsupportedVersionError

META = {"format": "deepshrink.model", "arch": {"zoo": "cnn1d", "kwargs": {}}, "info": {},
        "tensors": {f"conv{i}.weight": {"enc": "quant", "bits": 8, "blob": "b", "at": [100 * i, 90],
                                        "scheme": "uniform", "sfmt": "fpack", "shape": [25, 25, 3],
                                        "zconst": 128.0} for i in range(1, 4)}}


def _version_flags(data: bytes) -> tuple[int, int]:
    _, version, flags, *_ = container._HEADER.unpack(data[: container.HEADER_NBYTES])
    return version, flags


def test_compact_meta_is_version_2_smaller_and_round_trips() -> None:
    plain = encode_container(META, {"b": b"x" * 300})
    compact = encode_container(META, {"b": b"x" * 300}, compact=True)
    assert _version_flags(plain) == (1, container.FLAG_META_ZLIB)
    assert _version_flags(compact) == (2, container.FLAG_META_DICT)
    assert len(compact) < len(plain) - 50
    box = decode_container(compact)
    assert box.version == 2 and box.meta == META and box.blobs == {"b": b"x" * 300}


def test_compact_is_never_larger_and_version_2_only_when_strictly_smaller() -> None:
    rng = random.Random(0)
    metas = [{}, {"k": 1}, META, {"noise": "".join(rng.choice("0123456789abcdef") for _ in range(3000))}]
    for meta in metas:
        plain, compact = encode_container(meta, {}), encode_container(meta, {}, compact=True)
        assert len(compact) <= len(plain)
        assert (_version_flags(compact)[0] == 2) == (len(compact) < len(plain))
        assert decode_container(compact).meta == meta


def _reseal(meta_section: bytes, flags: int, version: int) -> bytes:
    head = container._header_and_digest(meta_section, [b""], flags, version)
    return head + meta_section


def test_bad_flag_combinations_are_corrupt() -> None:
    doc = json.dumps({"meta": {}, "blobs": []}).encode()
    dict_deflated = container._deflate_dict(doc)
    assert decode_container(_reseal(dict_deflated, container.FLAG_META_DICT, 2)).meta == {}
    with pytest.raises(CorruptArtifactError, match="flags"):
        decode_container(_reseal(dict_deflated, container.FLAG_META_DICT, 1))  # a version-1 file cannot
    with pytest.raises(CorruptArtifactError, match="flags"):
        decode_container(_reseal(dict_deflated, container.FLAG_META_DICT | container.FLAG_META_ZLIB, 2))
    with pytest.raises(CorruptArtifactError):
        decode_container(_reseal(zlib.compress(doc), container.FLAG_META_DICT, 2))


def test_dictionary_bomb_is_capped() -> None:
    huge = json.dumps({"meta": {"x": "a" * (8 << 20)}, "blobs": []}).encode()
    bomb = container._deflate_dict(huge)
    with pytest.raises(CorruptArtifactError, match="oversized"):
        decode_container(_reseal(bomb, container.FLAG_META_DICT, 2))


def test_newer_than_2_is_a_version_error() -> None:
    data = bytearray(encode_container(META, {}, compact=True))
    data[8:10] = (3).to_bytes(2, "little")
    with pytest.raises(UnsupportedVersionError, match="version 3"):
        decode_container(bytes(data))
