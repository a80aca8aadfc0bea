"""What an artifact holds, layer by layer, without building the model."""

from __future__ import annotations

import math
import os
from typing import Any

from deepshrink.codec import container
from deepshrink.core.errors import CorruptArtifactError

_STREAM_OF = {"blob": "dense", "iblob": "index", "vblob": "values", "cblob": "codebook",
              "qblob": "codes", "sblob": "scales", "zblob": "zero_points", "lblob": "levels"}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Layers, sparsity, bits and bytes per stream, plus header facts and checksum status."""
    summary = container.inspect_container(path)
    box = container.read_container(path, verify=False)
    meta = box.meta
    tensors = meta.get("tensors")
    if not isinstance(tensors, dict):
        raise CorruptArtifactError(f"{os.fspath(path)}: no tensor table in the metadata")
    try:
        layers = _layers(path, tensors, summary, box)
    except CorruptArtifactError:
        raise
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:  # metadata of wrong types
        seal = "" if summary["checksum_ok"] else "; its checksum does not match either"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptArtifactError(f"{os.fspath(path)}: malformed tensor table ({reason}){seal}") from None
    return {
        "path": summary["path"], "format_version": summary["version"], "checksum_ok": summary["checksum_ok"],
        "file_bytes": summary["file_bytes"], "header_bytes": summary["header_bytes"],
        "meta_bytes": summary["meta_bytes"], "architecture": meta.get("arch"), "info": meta.get("info", {}),
        "layers": layers,
    }


def _layers(path: str | os.PathLike[str], tensors: dict[str, Any], summary: dict[str, Any],
            box: Any) -> list[dict[str, Any]]:
    layers = []
    for name, t in tensors.items():
        if not isinstance(t, dict) or not isinstance(t.get("shape"), list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t["shape"]):
            raise CorruptArtifactError(f"{os.fspath(path)}: malformed entry for tensor {name}")
        numel = math.prod(t["shape"])
        if "at" in t:  # a slice of the quantized bundle (deepshrink.artifact.quantized)
            from deepshrink.artifact.quantized import bundled_streams

            streams = bundled_streams(t, box.blobs, f"{os.fspath(path)}: {name}")
        else:
            streams = {_STREAM_OF[k]: summary["blobs"].get(v, 0) for k, v in t.items() if k in _STREAM_OF}
        nnz = t.get("nnz")
        k = t.get("k")
        bits = t.get("bits") if isinstance(t.get("bits"), int) else None
        layers.append({
            "name": name, "shape": t["shape"], "encoding": t.get("enc"), "numel": numel,
            "nonzeros": nnz, "sparsity": (1.0 - nnz / numel) if isinstance(nnz, int) and numel else None,
            "weight_bits": bits or (math.ceil(math.log2(k)) if isinstance(k, int) and k > 1 else None),
            "dtype": t.get("dtype"), "index_bits": t.get("ibits"),
            "index_coding": t.get("icode"), "value_coding": t.get("vcode"),
            "bytes": sum(streams.values()), "streams": streams,
        })
    return layers
