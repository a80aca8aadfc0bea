"""The pickle-free artifact container: a fixed header, a JSON meta section and raw blobs.

Layout (little-endian)::

    magic b"DSHRINK\\x00" (8) | version u16 (=1) | flags u16 | meta length u32 |
    blob section length u64 | SHA-256 of (meta bytes + blob bytes) (32) | meta (UTF-8 JSON) | blobs

The meta JSON is ``{"blobs": [{"name", "offset", "length"}, ...], "meta": <user dict>}`` with
offsets relative to the start of the blob section. Flag bit 0 means the meta section is
zlib-compressed (the writer does so when it is smaller); the reader inflates it with a hard cap.  Readers validate sizes against the real file
length before reading anything large, so a corrupt header cannot trigger a huge allocation.

Version 2 (written only on request, ``compact=True``, and only when it is smaller) adds flag bit 1: the
meta section is raw DEFLATE primed with the frozen dictionary :data:`META_DICT` of the keys and values
every model artifact repeats, which roughly halves the metadata of a small model. A version-1 reader
refuses such a file with a clear "newer version" error; this reader reads both versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepshrink.core.errors import ArtifactError, ConfigError, CorruptArtifactError, UnsupportedVersionError
from deepshrink.core.fileio import atomic_writer

MAGIC = b"DSHRINK\x00"
FORMAT_VERSION = 2  # the newest version this reader understands
PLAIN_VERSION = 1  # written unless a compact meta section needs version 2
_HEADER = struct.Struct("<8sHHIQ32s")
HEADER_NBYTES = _HEADER.size  # 56
MAX_META_BYTES = 64 * 1024 * 1024
# zlib bombs: a compressed meta section may inflate to at most this ratio of its stored size (real
# metadata compresses ~3x) or MIN_INFLATE_CAP, whichever is larger, and hold at most MAX_JSON_CONTAINERS
# objects/arrays, so a small file cannot make json.loads build gigabytes of Python objects
INFLATE_RATIO = 64
MIN_INFLATE_CAP = 1 << 20
MAX_JSON_CONTAINERS = 1 << 18
_MAX_JSON_DEPTH = 64
FLAG_META_ZLIB = 0x0001
FLAG_META_DICT = 0x0002  # version >= 2: raw DEFLATE with the META_DICT preset dictionary
#: Frozen forever for version 2 (changing one byte breaks every version-2 file): JSON fragments that
#: model artifacts repeat, the most frequent last (DEFLATE reaches near matches more cheaply).
META_DICT = (
    b'"num_batches_tracked":{"blob":"t","dtype":"int64","enc":"dense","shape":[]},"'
    b'running_mean":{"at":[running_var":{"at":[downsample.weight":{"at":['
    b'"dtype":"float32","enc":"dense","shape":[["blob":"t","enc":"sparse","vkind":"codebook","vcode":"huffman",'
    b'"icode":"huffman","ibits":"cblob":"t'
    b'"lfmt":"fpack","scheme":"pow2","scheme":"kmeans","scheme":"binary","scheme":"ternary","cshape":[1,1,'
    b'"zfmt":"fpack","scheme":"fixed_point","qcode":"huffman","qc":"bits":4,"bits":2,"bits":1,'
    b'"format":"deepshrink.model","info":{},"tensors":{"'
    b'"layers.fc1.weight":{"at":[layer1.0.conv1.weight":{"at":[bn1.weight":{"at":['
    b'"bits":4,"blob":"b","enc":"quant","qcode":"arith","scheme":"uniform","sfmt":"fpack","shape":['
    b'"zconst":8.0},"features.'
    b'"blob":"b","enc":"fpack","shape":[25]},"'
    b'"bits":8,"blob":"b","enc":"quant","qcode":"arith","scheme":"uniform","sfmt":"fpack","shape":['
    b'"zconst":128.0},"fc.bias":{"at":[0,'
    b'"blob":"b","enc":"fpack","shape":[10]},"conv1.weight":{"at":['
    b'{"blobs":[{"length":'
    b',"name":"b","offset":0}],"meta":{"arch":{"kwargs":{},"zoo":"'
)


@dataclass(frozen=True)
class Container:
    """A decoded artifact: format version, user meta, named blobs, checksum status and file size."""

    version: int
    meta: dict[str, Any]
    blobs: dict[str, bytes]
    checksum_ok: bool
    nbytes: int


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Raise ConfigError unless ``value`` is plain JSON data (str keys, finite floats, lists/tuples)."""
    if depth > _MAX_JSON_DEPTH:
        raise ConfigError(f"container meta nests deeper than {_MAX_JSON_DEPTH} levels at {where}")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"container meta value at {where} is {value}, which JSON cannot store")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"container meta key {key!r} at {where} is not a string")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    raise ConfigError(
        f"container meta value at {where} has type {type(value).__name__}, not JSON-serialisable"
    )


def _prepare(meta: Mapping[str, Any], blobs: Mapping[str, bytes]) -> tuple[bytes, list[bytes]]:
    """Validate inputs and return (meta section bytes, blob payloads in order)."""
    if not isinstance(meta, Mapping):
        raise ConfigError(f"container meta must be a dict, got {type(meta).__name__}")
    if not isinstance(blobs, Mapping):
        raise ConfigError(f"container blobs must be a mapping of name to bytes, got {type(blobs).__name__}")
    meta = dict(meta)
    _check_json(meta, "meta")
    entries, payloads, offset = [], [], 0
    for name, blob in blobs.items():
        if not isinstance(name, str):
            raise ConfigError(f"blob name {name!r} is not a string")
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ConfigError(f"blob {name!r} must be bytes, got {type(blob).__name__}")
        data = bytes(blob)
        entries.append({"name": name, "offset": offset, "length": len(data)})
        payloads.append(data)
        offset += len(data)
    text = json.dumps(
        {"meta": meta, "blobs": entries}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    meta_bytes = text.encode("utf-8")
    if len(meta_bytes) > MAX_META_BYTES:
        raise ConfigError(f"container meta is {len(meta_bytes)} bytes, the limit is {MAX_META_BYTES}")
    return meta_bytes, payloads


def _deflate_dict(meta_bytes: bytes) -> bytes:
    """Raw DEFLATE (no zlib header or checksum: the container's SHA-256 covers it) primed with META_DICT."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=META_DICT)
    return deflater.compress(meta_bytes) + deflater.flush()


def _pack_meta(meta_bytes: bytes, compact: bool = False) -> tuple[bytes, int, int]:
    """The meta section as stored, its flags and the format version: the smallest of plain, zlib and
    (``compact`` only) dictionary DEFLATE, which needs version 2."""
    options = [(meta_bytes, 0, PLAIN_VERSION), (zlib.compress(meta_bytes, 9), FLAG_META_ZLIB, PLAIN_VERSION)]
    if compact:
        options.append((_deflate_dict(meta_bytes), FLAG_META_DICT, 2))
    return min(options, key=lambda o: (len(o[0]), o[2]))


def _unpack_meta(stored: bytes, flags: int, source: str) -> bytes:
    if flags & FLAG_META_DICT:
        inflater = zlib.decompressobj(-15, zdict=META_DICT)
    elif flags & FLAG_META_ZLIB:
        inflater = zlib.decompressobj()
    else:
        return stored
    cap = min(MAX_META_BYTES, max(MIN_INFLATE_CAP, INFLATE_RATIO * len(stored)))
    try:
        out = inflater.decompress(stored, cap)
    except zlib.error as exc:
        raise CorruptArtifactError(f"{source}: compressed meta section is corrupt ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise CorruptArtifactError(f"{source}: compressed meta section is truncated, oversized or padded")
    return out


def _header_and_digest(meta_bytes: bytes, payloads: list[bytes], flags: int,
                       version: int = PLAIN_VERSION) -> bytes:
    """The fixed header for these sections (meta as stored), including their SHA-256."""
    digest = hashlib.sha256(meta_bytes)
    for data in payloads:
        digest.update(data)
    blob_len = sum(len(d) for d in payloads)
    return _HEADER.pack(MAGIC, version, flags, len(meta_bytes), blob_len, digest.digest())


def encode_container(meta: Mapping[str, Any], blobs: Mapping[str, bytes], compact: bool = False) -> bytes:
    """Serialise ``meta`` and named ``blobs`` into container bytes (see the module docstring);
    ``compact`` allows the version-2 dictionary-compressed meta section."""
    meta_bytes, payloads = _prepare(meta, blobs)
    meta_bytes, flags, version = _pack_meta(meta_bytes, compact)
    return b"".join([_header_and_digest(meta_bytes, payloads, flags, version), meta_bytes, *payloads])


def write_container(path: str | os.PathLike[str], meta: Mapping[str, Any], blobs: Mapping[str, bytes],
                    compact: bool = False) -> int:
    """Write a container atomically to ``path``; returns the file size in bytes (``compact``: see
    :func:`encode_container`)."""
    meta_bytes, payloads = _prepare(meta, blobs)
    meta_bytes, flags, version = _pack_meta(meta_bytes, compact)
    header = _header_and_digest(meta_bytes, payloads, flags, version)
    with atomic_writer(path) as fh:
        fh.write(header)
        fh.write(meta_bytes)
        for data in payloads:
            fh.write(data)
    return len(header) + len(meta_bytes) + sum(len(d) for d in payloads)


def _parse_header(head: bytes, file_size: int, source: str) -> tuple[int, int, int, bytes, int]:
    """Check the fixed header against the real size; returns (version, meta len, blob len, digest, flags)."""
    if file_size < HEADER_NBYTES or len(head) < HEADER_NBYTES:
        raise CorruptArtifactError(
            f"{source}: truncated, {file_size} bytes is shorter than the {HEADER_NBYTES}-byte header"
        )
    magic, version, flags, meta_len, blob_len, digest = _HEADER.unpack(head[:HEADER_NBYTES])
    if magic != MAGIC:
        raise CorruptArtifactError(f"{source}: not a deepshrink artifact (bad magic {magic!r})")
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{source}: format version {version} is newer than the supported version {FORMAT_VERSION}; "
            "upgrade deepshrink"
        )
    if version < 1:
        raise CorruptArtifactError(f"{source}: invalid format version {version}")
    known = FLAG_META_ZLIB | (FLAG_META_DICT if version >= 2 else 0)
    if flags & ~known or flags == FLAG_META_ZLIB | FLAG_META_DICT:
        raise CorruptArtifactError(f"{source}: unknown header flags 0x{flags:04x} for format version {version}")
    if meta_len > MAX_META_BYTES:
        raise CorruptArtifactError(
            f"{source}: declared meta length {meta_len} exceeds the {MAX_META_BYTES}-byte limit"
        )
    expected = HEADER_NBYTES + meta_len + blob_len
    if expected != file_size:
        what = "truncated" if expected > file_size else "has trailing bytes"
        raise CorruptArtifactError(
            f"{source}: {what}: header declares {expected} bytes, file has {file_size}"
        )
    return version, meta_len, blob_len, digest, flags


def _is_count(value: Any) -> bool:
    """True for a non-negative int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _reject_constant(name: str) -> Any:
    """json.loads hook: NaN/Infinity are not valid JSON."""
    raise ValueError(f"invalid JSON constant {name}")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e999`` reads as infinity) is refused like the
    ``Infinity`` constant, so no later ``int()`` meets an infinite count."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _parse_meta(
    meta_bytes: bytes, blob_len: int, source: str
) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """Parse and structurally validate the meta section; returns (user meta, [(name, offset, length)])."""
    if meta_bytes.count(b"[") + meta_bytes.count(b"{") > MAX_JSON_CONTAINERS:  # counted before parsing
        raise CorruptArtifactError(
            f"{source}: meta section holds over {MAX_JSON_CONTAINERS} JSON objects/arrays")
    try:
        doc = json.loads(meta_bytes.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptArtifactError(f"{source}: meta section is not valid UTF-8 JSON ({reason})") from None
    if not isinstance(doc, dict) or set(doc) != {"meta", "blobs"}:
        raise CorruptArtifactError(
            f"{source}: meta section must be an object with exactly the keys 'meta' and 'blobs'"
        )
    if not isinstance(doc["meta"], dict) or not isinstance(doc["blobs"], list):
        raise CorruptArtifactError(
            f"{source}: meta section has 'meta' that is not an object or 'blobs' that is not a list"
        )
    entries: list[tuple[str, int, int]] = []
    names: set[str] = set()
    for i, entry in enumerate(doc["blobs"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "offset", "length"}:
            raise CorruptArtifactError(
                f"{source}: blob entry {i} must have exactly 'name', 'offset' and 'length'"
            )
        name, offset, length = entry["name"], entry["offset"], entry["length"]
        if not isinstance(name, str) or not _is_count(offset) or not _is_count(length):
            raise CorruptArtifactError(
                f"{source}: blob entry {i} needs a string name and non-negative integer offset/length"
            )
        if name in names:
            raise CorruptArtifactError(f"{source}: blob name {name!r} appears twice")
        if offset + length > blob_len:
            raise CorruptArtifactError(
                f"{source}: blob {name!r} spans {offset}..{offset + length}, "
                f"past the {blob_len}-byte blob section"
            )
        names.add(name)
        entries.append((name, offset, length))
    end, prev = 0, None
    for name, offset, length in sorted(entries, key=lambda e: (e[1], e[2])):
        if offset < end:
            raise CorruptArtifactError(f"{source}: blob {name!r} overlaps blob {prev!r}")
        if length:
            end, prev = offset + length, name
    return doc["meta"], entries


def _decode_body(
    head: bytes, body: bytes | memoryview, file_size: int, source: str, verify: bool
) -> tuple[Container, int, int]:
    """Decode a container from its header and meta+blob bytes; returns (container, meta len, blob len)."""
    version, meta_len, blob_len, digest, flags = _parse_header(head, file_size, source)
    checksum_ok = hashlib.sha256(body).digest() == digest
    if verify and not checksum_ok:
        raise CorruptArtifactError(f"{source}: checksum mismatch, the file is corrupt")
    view = memoryview(body)
    meta, entries = _parse_meta(_unpack_meta(bytes(view[:meta_len]), flags, source), blob_len, source)
    blobs = {
        name: bytes(view[meta_len + offset : meta_len + offset + length]) for name, offset, length in entries
    }
    box = Container(version=version, meta=meta, blobs=blobs, checksum_ok=checksum_ok, nbytes=file_size)
    return box, meta_len, blob_len


def decode_container(data: bytes, source: str = "<bytes>", verify: bool = True) -> Container:
    """Decode container bytes; structural problems raise CorruptArtifactError/UnsupportedVersionError."""
    view = memoryview(data)
    head = bytes(view[:HEADER_NBYTES])
    return _decode_body(head, view[HEADER_NBYTES:], len(view), source, verify)[0]


def _read_file(path: str | os.PathLike[str], verify: bool) -> tuple[Container, int, int]:
    """Read and validate a container file; returns (container, meta length, blob section length)."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER_NBYTES)
            _parse_header(head, size, source)  # before reading the (possibly huge) body
            body = fh.read()
    except FileNotFoundError:
        raise ArtifactError(f"{source}: no such artifact file") from None
    except IsADirectoryError:
        raise ArtifactError(f"{source}: is a directory, not an artifact file") from None
    except OSError as exc:
        raise ArtifactError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(head) + len(body) != size:
        raise CorruptArtifactError(f"{source}: file changed size while being read")
    return _decode_body(head, body, size, source, verify)


def read_container(path: str | os.PathLike[str], verify: bool = True) -> Container:
    """Read and validate a container file; ``verify=False`` reports a bad checksum via ``checksum_ok``."""
    return _read_file(path, verify)[0]


def inspect_container(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary for a CLI ``inspect``: sizes, version and checksum status (bad checksum reported)."""
    box, meta_len, blob_len = _read_file(path, verify=False)
    return {
        "path": os.fspath(path),
        "version": box.version,
        "checksum_ok": box.checksum_ok,
        "file_bytes": box.nbytes,
        "header_bytes": HEADER_NBYTES,
        "meta_bytes": meta_len,
        "blob_section_bytes": blob_len,
        "blobs": {name: len(data) for name, data in box.blobs.items()},
        "meta_keys": sorted(box.meta),
    }
