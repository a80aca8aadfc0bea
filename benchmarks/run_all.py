"""Run every benchmark and rebuild benchmarks/RESULTS.md from benchmarks/results/*.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Each entry: a script and its arguments. `python benchmarks/run_all.py SCRIPT [ARGS...]` runs one.
BENCHMARKS: list[list[str]] = [
    ["bench_deep_compression.py", "--recipes", "default", "--result-name", "deep_compression_default"],
    ["bench_deep_compression.py", "--recipes", "paper", "--result-name", "deep_compression_paper"],
    ["bench_quantization.py"],
    ["bench_quantization.py", "--parts", "sizes"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet300", "--seeds", "3", "--baseline", "recipe",
     "--retrain-epochs", "8", "--steps", "5", "--name", "pruning_unstructured_lenet300"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet5", "--seeds", "3", "--baseline", "recipe",
     "--retrain-epochs", "5", "--steps", "3", "--name", "pruning_unstructured_lenet5"],
    # the bar (issue 3): more prune/retrain rounds, same settings otherwise
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet300", "--seeds", "3", "--baseline", "recipe",
     "--retrain-epochs", "8", "--steps", "8", "--name", "pruning_unstructured_lenet300_s8"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet5", "--seeds", "3", "--baseline", "recipe",
     "--retrain-epochs", "5", "--steps", "5", "--name", "pruning_unstructured_lenet5_s5"],
    # the same settings on three fresh seeds (3, 4, 5): a confirmation of the rows above
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet300", "--seeds", "3,4,5", "--baseline",
     "recipe", "--retrain-epochs", "8", "--steps", "8", "--name", "pruning_unstructured_lenet300_s8_confirm"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet5", "--seeds", "3,4,5", "--baseline", "recipe",
     "--retrain-epochs", "5", "--steps", "5", "--name", "pruning_unstructured_lenet5_s5_confirm"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet300", "--seeds", "0,1,2,3,4,5", "--baseline",
     "recipe", "--retrain-epochs", "8", "--steps", "8", "--criteria", "taylor_train", "--name",
     "pruning_unstructured_lenet300_taylor_train"],
    ["bench_pruning.py", "--parts", "unstructured", "--models", "lenet5", "--seeds", "0,1,2,3,4,5", "--baseline",
     "recipe", "--retrain-epochs", "5", "--steps", "5", "--criteria", "taylor_train", "--name",
     "pruning_unstructured_lenet5_taylor_train"],
    ["bench_pruning.py", "--parts", "structured", "--seeds", "3", "--name", "pruning_structured"],
    ["bench_pruning.py", "--parts", "ablation", "--models", "resnet8,mobilenetv2", "--seeds", "2",
     "--name", "pruning_ablation"],
    ["bench_factorize.py"],
    ["bench_distillation.py"],
    ["bench_distillation.py", "--parts", "recovery", "--seeds", "3", "--result-name", "distillation_recovery_seeds0-2"],
    ["bench_distillation.py", "--parts", "recovery", "--seeds", "3", "--first-seed", "3", "--result-name",
     "distillation_recovery_seeds3-5"],
    ["bench_distillation.py", "--parts", "ddp", "--seeds", "3", "--ddp-batches", "64,256", "--result-name",
     "distillation_ddp"],
    ["bench_distillation.py", "--parts", "ddp", "--ddp-workload", "hinton", "--seeds", "3", "--result-name",
     "distillation_ddp_hinton"],
    ["bench_recipes.py", "--share-baselines"],
    # the MiniLM recipes at the MiniLM benchmarks' 2 threads (no training: the scores match those rows)
    ["bench_recipes.py", "--recipes", "minilm_int8,minilm_ffn10_refit", "--threads", "2", "--name", "recipes_minilm"],
    # auto without augmentation, judged on the measured validation drop alone (--confidence 0: the search as it
    # was before the confidence bound existed)
    ["bench_auto.py", "--models", "lenet300", "--with-dc", "--confidence", "0", "--result-name", "auto_lenet300"],
    ["bench_auto.py", "--models", "lenet5", "--prune-share", "1.0", "--step-factor", "0.5", "--confidence", "0",
     "--result-name", "auto_lenet5"],
    # the hand-written recipe judged as auto must judge it: on 6 fresh 80/20 splits
    ["bench_auto.py", "--models", "lenet300", "--with-dc", "--confidence", "0", "--dc-splits", "0,1,2,3,4,5",
     "--result-name", "auto_lenet300_splits"],
    # the issue-6 bar: auto retraining on shifted digits, each result's drop + 1 standard error within budget
    ["bench_auto.py", "--models", "lenet300", "--seeds", "0,1,2,3,4,5", "--augment", "shift:2", "--margin", "1.0",
     "--confidence", "1.0", "--prune-share", "0.75", "--with-dc", "--result-name", "auto_lenet300_augment"],
    ["bench_auto.py", "--models", "lenet5", "--seeds", "0,1,2", "--augment", "shift:2", "--margin", "1.0",
     "--confidence", "1.0", "--prune-share", "0.75", "--with-dc", "--result-name", "auto_lenet5_augment"],
    # the same augmented search judged on the measured drop alone (--confidence 0), kept for comparison
    ["bench_auto.py", "--models", "lenet300", "--seeds", "0,1,2,3,4,5", "--augment", "shift:2", "--margin", "0.8",
     "--confidence", "0", "--prune-share", "0.75", "--with-dc", "--result-name", "auto_lenet300_augment_nobound"],
    ["bench_minilm.py"],
    ["bench_minilm_prune.py"],
]


def assemble() -> Path:
    parts = ["# Benchmark results", "",
             "Generated by `make bench` (`python benchmarks/run_all.py`); each section names the machine and the "
             "command that produced it. Published figures come from `shared/REFERENCES.md`.", ""]
    for md in sorted((ROOT / "results").glob("*.md")):
        parts += [md.read_text().rstrip(), ""]
    out = ROOT / "RESULTS.md"
    out.write_text("\n".join(parts))
    return out


def main() -> int:
    runs = [sys.argv[1:]] if len(sys.argv) > 1 else BENCHMARKS
    for script, *args in runs:
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], check=False)
        if proc.returncode:
            print(f"benchmark {script} failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
    print(f"wrote {assemble()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
