"""all-MiniLM-L6-v2: FFN pruning with and without the least-squares refit of the down-projections (no training).

For each ratio of FFN neurons removed per layer (lowest ``ffn_importance`` first, on calibration sentences
from the standard-library docstrings), the model is pruned plainly and with ``prune_ffn(..., refit=True)``
(``deepshrink.transformers.refit``: each layer's down-projection re-solved by ridge least squares so the kept
neurons reproduce the original FFN output). Quality against the fp32 model: mean cosine of the sentence
embeddings and top-1 retrieval agreement (200 queries vs 1,000 corpus sentences from Python's documentation,
disjoint from the calibration text). MACs at batch 32 x 128 tokens. Quality only: no latency is measured.
Issue 7's quality bars: mean cosine >= 0.99, agreement >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, git_rev, machine, write_result  # noqa: E402

from deepshrink.data.text import python_doc_sentences, stdlib_docstring_sentences  # noqa: E402
from deepshrink.measure import count_params  # noqa: E402
from deepshrink.measure.embedding import EmbeddingEvaluator, default_split  # noqa: E402
from deepshrink.measure.flops import count_macs  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.transformers import encode, ffn_importance, load_minilm, prune_ffn, tokenize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.1,0.25,0.5", help="comma list of FFN ratios removed per layer")
    ap.add_argument("--calib", type=int, default=512, help="calibration sentences (importance and refit)")
    ap.add_argument("--ridge", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="50 queries x 250 corpus, 64 calibration sentences")
    ap.add_argument("--result-name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    fp32, tok = load_minilm()
    queries, corpus = default_split(50, 250) if args.quick else default_split()
    evaluator = EmbeddingEvaluator(lambda s: encode(fp32, tok, s), queries, corpus)
    used = set(python_doc_sentences(len(queries) + len(corpus)))
    train = [s for s in python_doc_sentences() if s not in used] + stdlib_docstring_sentences(exclude=used)
    n_calib = 64 if args.quick else args.calib
    calib = [tokenize(tok, train[i:i + 32]) for i in range(0, n_calib, 32)]
    example = tokenize(tok, (train * 2)[:32], pad_to=128)
    scores = ffn_importance(fp32, calib)
    base_macs, base_params = count_macs(fp32, example), count_params(fp32)
    rows = [["fp32 (unpruned)", "-", "1536", f"{base_params / 1e6:.2f}M", "100%", "1.0000", "1.000", "-"]]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for refit in (False, True):
            model = copy.deepcopy(fp32)
            t0 = time.time()
            kept = prune_ffn(model, ratio, calib, scores=scores, refit=refit, ridge=args.ridge)
            build = time.time() - t0
            s = evaluator(lambda x, m=model: encode(m, tok, x))
            macs = count_macs(model, example)
            print(f"ffn {ratio} refit={refit}: cosine {s.mean_cosine:.4f} agreement {s.retrieval_agreement:.3f} "
                  f"({build:.0f} s)", flush=True)
            rows.append([f"FFN {100 * ratio:.0f}% removed", "yes" if refit else "no", str(kept[0]),
                         f"{count_params(model) / 1e6:.2f}M", f"{100 * macs / base_macs:.0f}%",
                         f"{s.mean_cosine:.4f}", f"{s.retrieval_agreement:.3f}", f"{build:.0f}"])
    lines = ["## all-MiniLM-L6-v2: FFN pruning, plain vs least-squares refit (no training)", "",
             f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`.", "",
             f"{len(queries)} queries x {len(corpus)} corpus sentences (Python documentation), {n_calib} calibration "
             f"sentences (standard-library docstrings, disjoint), ridge {args.ridge:g}. MACs at batch 32 x 128 tokens "
             "(the FFN is about two thirds of them). Quality bars of issue 7: cosine >= 0.99, agreement >= 0.95."
             + (" QUICK smoke run: not results." if args.quick else ""), "",
             markdown_table(["model", "refit", "FFN width", "params", "MACs", "mean cosine", "agreement",
                             "build s"], rows), "",
             f"Time: {time.time() - started:.0f} s.", ""]
    name = args.result_name or ("minilm_prune_quick" if args.quick else "minilm_prune")
    print(f"wrote {write_result(name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
