"""all-MiniLM-L6-v2: the structure axis of the Pareto front (FFN / head pruning, layer counts, fp32 or int8).

Each configuration is built without training, from calibration sentences (``training_sentences``: Python
documentation topics not used by the evaluation, then standard-library docstrings):
- FFN pruning per layer (lowest ``ffn_importance`` first), plain and with ``prune_ffn(..., refit=True)``
  (``deepshrink.transformers.refit``: each down-projection re-solved by ridge least squares so the kept
  neurons reproduce the original FFN output);
- head pruning (global ranking by ``head_contribution``), plain and with ``prune_heads(..., refit=True)``
  (each ``attention.output.dense`` re-solved the same way);
- layer dropping (no distillation here: bench_minilm.py has the distilled rows);
- optionally int8: torch's dynamic int8 Linear kernels (per-channel), FFN down-projections kept fp32 ("int8"
  rows), or deepshrink's compiled int8 (``quantize_int8`` with SmoothQuant 0.5 + ``compile_int8`` at the fixed
  32 x 128 shape: oneDNN int8 kernels, per-token activations, every Linear int8; "int8 compiled" rows, 8-bit
  weight codes on VNNI CPUs, 7-bit elsewhere, or as the row says).
Quality against the fp32 model: mean cosine of sentence embeddings and top-1 retrieval agreement (200 queries
vs 1,000 corpus sentences from Python's documentation, disjoint from the calibration text). Speed: one
interleaved latency run of every configuration (``compare_latency``) at batch 32 x 128 tokens, 2 threads,
PyTorch eager; run it on a quiet machine. Issue 7's bars: >= 3x, cosine >= 0.99, agreement >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, git_rev, machine, write_result  # noqa: E402

from deepshrink.data.text import training_sentences  # noqa: E402
from deepshrink.measure import compare_latency, count_params  # noqa: E402
from deepshrink.measure.embedding import EmbeddingEvaluator, default_split  # noqa: E402
from deepshrink.measure.flops import count_macs  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.transformers.inductor import compile_int8  # noqa: E402
from deepshrink.transformers.int8 import quantize_int8  # noqa: E402
from deepshrink.transformers import (  # noqa: E402
    drop_layers, encode, ffn_importance, load_minilm, prune_ffn, prune_heads, quantize_linears, structure, tokenize,
)

FFN_OUT = r"encoder\.layer\.\d+\.output\.dense$"
# name -> settings; "int8" rows reuse the float row named in "of"
CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8": {"int8": True},
    "FFN 10%": {"ffn": 0.10},
    "FFN 10% + refit": {"ffn": 0.10, "refit": True},
    "FFN 10% + refit, int8": {"ffn": 0.10, "refit": True, "int8": True},
    "FFN 25%": {"ffn": 0.25},
    "FFN 25% + refit": {"ffn": 0.25, "refit": True},
    "FFN 25% + refit, int8": {"ffn": 0.25, "refit": True, "int8": True},
    "FFN 50%": {"ffn": 0.50},
    "FFN 50% + refit": {"ffn": 0.50, "refit": True},
    "heads 25%": {"heads": 0.25},
    "heads 25% + refit": {"heads": 0.25, "refit": True},
    "heads 50%": {"heads": 0.50},
    "heads 50% + refit": {"heads": 0.50, "refit": True},
    "5 layers": {"layers": [0, 1, 2, 3, 5]},
    "4 layers": {"layers": [0, 2, 3, 5]},
    "3 layers": {"layers": [0, 2, 5]},
    "int8 compiled": {"int8c": True},
    "int8 compiled, 7-bit weights": {"int8c": True, "bits": 7},
    "FFN 10% + refit, int8 compiled": {"ffn": 0.10, "refit": True, "int8c": True},
    "FFN 25% + refit, int8 compiled": {"ffn": 0.25, "refit": True, "int8c": True},
    "heads 25% + refit, int8 compiled": {"heads": 0.25, "refit": True, "int8c": True},
    "5 layers, int8 compiled": {"layers": [0, 1, 2, 3, 5], "int8c": True},
}
QUANT_KEYS = ("int8", "int8c", "bits")
DEFAULT = [n for n in CONFIGS if "50%" not in n]  # the 50% rows are far below the quality bars
QUICK = ["fp32", "int8", "FFN 25%", "FFN 25% + refit", "4 layers"]


def quantize(model: torch.nn.Module, spec: dict[str, Any], calib: list, example: Any, threads: int) -> Any:
    """The int8 form of a float row: torch dynamic int8 ("int8") or deepshrink's compiled int8 ("int8c")."""
    if spec.get("int8c"):
        q = quantize_int8(model, calibration=calib, smooth=0.5, weight_bits=spec.get("bits"))
        return compile_int8(q, example, threads=threads, lengths=[example[0].shape[1]])
    return quantize_linears(model, per_channel=True, skip=[FFN_OUT])


def build(spec: dict[str, Any], fp32: torch.nn.Module, calib: list, scores: list[torch.Tensor],
          ridge: float, example: Any, threads: int) -> Any:
    model = copy.deepcopy(fp32)
    if spec.get("layers"):
        drop_layers(model, spec["layers"])
    if spec.get("heads"):
        prune_heads(model, spec["heads"], calib, refit=bool(spec.get("refit")), ridge=ridge)
    if spec.get("ffn"):
        prune_ffn(model, spec["ffn"], calib, scores=scores, refit=bool(spec.get("refit")), ridge=ridge)
    model.eval()
    return quantize(model, spec, calib, example, threads) if spec.get("int8") or spec.get("int8c") else model


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on both speed-up and agreement."""
    return [r for r in rows if not any(o is not r and o["speedup"] >= r["speedup"] and o["agree"] >= r["agree"]
                                       and (o["speedup"] > r["speedup"] or o["agree"] > r["agree"]) for o in rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=None, help=f"semicolon list from {list(CONFIGS)} (default: all but the 50%% rows)")
    ap.add_argument("--calib", type=int, default=512, help="calibration sentences (importance and refit)")
    ap.add_argument("--ridge", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=2,
                    help="timed calls per candidate per round; above 1, one untimed call first settles the previous "
                         "candidate's thread pool")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--quick", action="store_true", help="5 configurations, 50 x 250 sentences, 2 rounds")
    ap.add_argument("--result-name", default=None)
    args = ap.parse_args()
    names = [n.strip() for n in args.configs.split(";")] if args.configs else (QUICK if args.quick else DEFAULT)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    started = time.time()
    fp32, tok = load_minilm()
    queries, corpus = default_split(50, 250) if args.quick else default_split()
    evaluator = EmbeddingEvaluator(lambda s: encode(fp32, tok, s), queries, corpus)
    train = training_sentences(queries + corpus)
    n_calib = min(64 if args.quick else args.calib, len(train))
    calib = [tokenize(tok, train[i:min(i + 32, n_calib)]) for i in range(0, n_calib, 32)]
    example = tokenize(tok, (train * 2)[:32], pad_to=128)
    scores = ffn_importance(fp32, calib)
    base_macs = count_macs(fp32, example)
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    for name in names:
        spec = CONFIGS[name]
        t0 = time.time()
        quantized = bool(spec.get("int8") or spec.get("int8c"))
        float_name = next((n for n, sp in CONFIGS.items() if n in models and sp == {k: v for k, v in spec.items()
                                                                                   if k not in QUANT_KEYS}), None)
        if name == "fp32":
            model = fp32
        elif quantized and float_name is not None:  # the same float model, quantized
            model = quantize(models[float_name], spec, calib, example, args.threads)
        else:
            model = build(spec, fp32, calib, scores, args.ridge, example, args.threads)
        built = time.time() - t0
        s = evaluator(lambda x, m=model: encode(m, tok, x))
        float_model = model if not quantized else None
        macs = count_macs(float_model, example) if float_model is not None else None
        shape = structure(model) if float_model is not None else None
        print(f"{name}: cosine {s.mean_cosine:.4f} agreement {s.retrieval_agreement:.3f} (build {built:.0f} s)",
              flush=True)
        rows.append({"name": name, "cos": s.mean_cosine, "agree": s.retrieval_agreement, "build": built,
                     "params": count_params(model) if float_model is not None else None,
                     "macs": macs, "shape": shape, "speedup": 0.0, "ms": None})
        models[name] = model
    if not args.no_latency:
        lat = compare_latency({n: m for n, m in models.items()}, example, rounds=2 if args.quick else args.rounds,
                              warmup=1, threads=args.threads, block=args.block)
        for r in rows:
            r["ms"] = lat[r["name"]].median_ms
        for r in rows:
            r["speedup"] = lat["fp32"].median_ms / r["ms"]
    front = {r["name"] for r in pareto(rows)} if not args.no_latency else set()
    table = [[r["name"], f"{r['ms']:.0f}" if r["ms"] else "-", f"{r['speedup']:.2f}x" if r["ms"] else "-",
              f"{100 * r['macs'] / base_macs:.0f}%" if r["macs"] else "(as float row)",
              f"{r['params'] / 1e6:.2f}M" if r["params"] else "-", f"{r['cos']:.4f}", f"{r['agree']:.3f}",
              "yes" if r["name"] in front else "", f"{r['build']:.0f}",
              (f"heads {r['shape']['heads']}, FFN {r['shape']['ffn']}" if r["shape"] else "")]
             for r in rows]
    lines = ["## all-MiniLM-L6-v2: structure Pareto front (pruning, layers, fp32/int8), no training", "",
             f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`.", "",
             f"Latency: batch 32 x 128 tokens, {args.threads} threads, PyTorch eager, median of "
             f"{2 if args.quick else args.rounds} interleaved rounds ({args.block} timed calls per candidate per "
             f"round, after an untimed one when above 1). Quality: {len(queries)} queries x {len(corpus)} "
             f"corpus sentences (Python documentation) against fp32; {n_calib} calibration sentences (the first of "
             f"`training_sentences`: Python documentation topics not used by the evaluation, then standard-library "
             f"docstrings), ridge {args.ridge:g}. int8 = torch dynamic int8 Linear kernels, per-channel, FFN "
             "down-projections fp32; int8 compiled = quantize_int8 (SmoothQuant 0.5) + compile_int8 at the fixed "
             "32 x 128 shape (oneDNN int8 kernels, every Linear; the embedding table stays fp32 here). No distillation: bench_minilm.py has the distilled rows. Bars (issue 7): >= 3x, "
             "cosine >= 0.99, agreement >= 0.95." + (" QUICK smoke run: not results." if args.quick else ""), "",
             markdown_table(["configuration", "median ms", "speed-up", "MACs", "params", "mean cosine", "agreement",
                             "Pareto (speed, agreement)", "build s", "structure"], table), "",
             f"Time: {time.time() - started:.0f} s.", ""]
    name = args.result_name or ("minilm_prune_quick" if args.quick else "minilm_prune")
    print(f"wrote {write_result(name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
