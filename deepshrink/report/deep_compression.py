"""Per-layer tables shaped like Deep Compression's Tables 2-3, built from real artifact breakdowns."""

from __future__ import annotations

from typing import Any

from deepshrink.artifact import TensorReport
from deepshrink.pipelines.deep_compression import DeepCompressionResult
from deepshrink.report.tables import markdown_table

LAYER_HEADERS = [
    "layer", "weights", "kept %", "weight bits P+Q", "weight bits P+Q+H", "value entropy",
    "index bits P+Q", "index bits P+Q+H", "index entropy", "size P %", "size P+Q %", "size P+Q+H %",
]
# Narrow headers for terminals: w = weight (value) stream, i = index stream, H = entropy.
LAYER_HEADERS_SHORT = ["layer", "weights", "kept%", "w PQ", "w PQH", "w H", "i PQ", "i PQH", "i H",
                       "P%", "PQ%", "PQH%"]


def _weights(reports: list[TensorReport]) -> dict[str, TensorReport]:
    return {r.name: r for r in reports if r.name.endswith(".weight")}


def _per_nnz_bits(rep: TensorReport, stream: str) -> float | None:
    s = rep.streams.get(stream)
    if s is None or rep.nnz == 0:
        return None
    return 8.0 * s.nbytes / rep.nnz


def layer_rows(result: DeepCompressionResult) -> list[dict[str, Any]]:
    """One row per compressed layer: kept fraction, bits per weight and index, sizes after P, P+Q, P+Q+H."""
    by_stage = {s.name: _weights(s.save_report.tensors) for s in result.stages if s.save_report}
    rows = []
    for name in result.weights_before:
        key = f"{name}.weight"
        p, q, h = by_stage["pruned"][key], by_stage["quantized"][key], by_stage["huffman"][key]
        fp32 = 4 * p.numel
        packed = _per_nnz_bits(q, "index")
        index_pq = packed if packed is not None else q.index_bits
        rows.append({
            "layer": name,
            "weights": p.numel,
            "nonzeros": h.nnz,
            "kept_pct": 100.0 * h.nnz / p.numel,
            "encoding": h.encoding,
            "weight_bits_pq": q.weight_bits,
            "weight_bits_pqh": _per_nnz_bits(h, "values"),
            "value_entropy": h.streams["values"].entropy_bits if "values" in h.streams else None,
            "index_width_pq": q.index_bits,  # the relative-index width b the P+Q stage packs at
            # per stored weight, as the other bits columns (fillers included): the packed index stream's bits
            "index_bits_pq": index_pq,
            "index_bits_pqh": _per_nnz_bits(h, "index"),
            "index_entropy": h.streams["index"].entropy_bits if "index" in h.streams else None,
            "fillers": (h.streams["index"].symbols - h.nnz) if "index" in h.streams else 0,
            "index_coding": h.streams["index"].coding if "index" in h.streams else None,
            "value_coding": h.streams["values"].coding if "values" in h.streams else None,
            "bytes_p": p.nbytes,
            "bytes_pq": q.nbytes,
            "bytes_pqh": h.nbytes,
            "size_p_pct": 100.0 * p.nbytes / fp32,
            "size_pq_pct": 100.0 * q.nbytes / fp32,
            "size_pqh_pct": 100.0 * h.nbytes / fp32,
        })
    return rows


def total_row(result: DeepCompressionResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    weights = sum(r["weights"] for r in rows)
    nnz = sum(r["nonzeros"] for r in rows)

    def avg(key: str) -> float | None:
        vals = [(r[key], r["nonzeros"]) for r in rows if r[key] is not None]
        return sum(v * n for v, n in vals) / max(1, sum(n for _, n in vals)) if vals else None

    stage = {s.name: s for s in result.stages}
    return {
        "layer": "total (file)", "weights": weights, "nonzeros": nnz, "kept_pct": 100.0 * nnz / weights,
        "weight_bits_pq": avg("weight_bits_pq"), "weight_bits_pqh": avg("weight_bits_pqh"),
        "value_entropy": avg("value_entropy"), "index_bits_pq": avg("index_bits_pq"),
        "index_bits_pqh": avg("index_bits_pqh"), "index_entropy": avg("index_entropy"),
        "size_p_pct": 100.0 * stage["pruned"].artifact_bytes / result.fp32_bytes,
        "size_pq_pct": 100.0 * stage["quantized"].artifact_bytes / result.fp32_bytes,
        "size_pqh_pct": 100.0 * stage["huffman"].artifact_bytes / result.fp32_bytes,
    }


def table_cells(row: dict[str, Any], digits: int | None = None) -> list[object]:
    """The row's cells in LAYER_HEADERS order; ``digits`` rounds floats for narrow terminals."""
    keys = ["layer", "weights", "kept_pct", "weight_bits_pq", "weight_bits_pqh", "value_entropy",
            "index_bits_pq", "index_bits_pqh", "index_entropy", "size_p_pct", "size_pq_pct", "size_pqh_pct"]
    cells = [row[k] for k in keys]
    if digits is None:
        return cells
    return [round(c, digits) if isinstance(c, float) else c for c in cells]


def layer_table_markdown(rows: list[dict[str, Any]], total: dict[str, Any]) -> str:
    return markdown_table(LAYER_HEADERS, [table_cells(r) for r in [*rows, total]])


STAGE_HEADERS = ["stage", "accuracy %", "artifact bytes", "ratio vs fp32", "params", "non-zeros", "MACs"]


def stage_cells(stage: dict[str, Any], fp32_bytes: int) -> list[object]:
    return [stage["name"], 100.0 * stage["accuracy"], stage["artifact_bytes"],
            fp32_bytes / stage["artifact_bytes"], stage["params"], stage["nonzeros"], stage["macs"]]
