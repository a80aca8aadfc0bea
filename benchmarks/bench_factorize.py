"""Low-rank factorization and depthwise-separable substitution on LeNet-5 (mnist5k), 3 seeds.

Bars (issue 8): (a) SVD of the 800x500 fc1 layer + fine-tuning to >= 4x fewer parameters in that
layer, accuracy within 0.5 points of the baseline (mean of seeds); (b) the zoo's standard CNN
(LeNet-5) with its convolutions replaced by depthwise-separable blocks initialised from the
original kernels: >= 3x fewer MACs, >= 1.5x lower CPU latency (batch 64, 2 threads, candidates
interleaved) and accuracy within 1 point after recovery by logit distillation from the baseline.
Also: the compact zoo models trained directly (distilled from the same baseline) for reference.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import command, git_rev, machine, mean_std, write_result  # noqa: E402

from deepshrink.artifact import StoragePolicy, load, save  # noqa: E402
from deepshrink.core.errors import DeepShrinkError  # noqa: E402
from deepshrink.data import load as load_data  # noqa: E402
from deepshrink.factorize import factorize_layer, recover, to_depthwise_separable  # noqa: E402
from deepshrink.measure import compare_latency, count_macs, count_params, evaluate  # noqa: E402
from deepshrink.models import create  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.train import TrainConfig, Trainer, seed_everything  # noqa: E402

BASELINE = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")
FINETUNE_SVD = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine")
RECOVER_DW = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")
COMPACT = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-3, schedule="cosine")
DW_MULTIPLIERS = {"conv1": 4, "conv2": 1}


def baseline(train, folder: Path, seed: int) -> torch.nn.Module:
    """Train LeNet-5 or reuse the artifact of an identical earlier run."""
    cfg = BASELINE.replace(seed=seed)
    key = hashlib.sha256(json.dumps(["lenet5", "mnist5k", asdict(cfg)], sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"lenet5.seed{seed}.{key}.dsk"
    if path.exists():
        try:
            return load(path)
        except DeepShrinkError:
            pass
    seed_everything(seed)
    model = create("lenet5")
    Trainer(model, cfg, device="cpu", progress=False).fit(train)
    folder.mkdir(parents=True, exist_ok=True)
    save(model.eval(), path, StoragePolicy(sparse=False, coding="packed"))
    return model


def acc(model: torch.nn.Module, test) -> float:
    return 100.0 * evaluate(model, test).accuracy


def layer_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="out/bench/factorize")
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--compact-seeds", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_data("mnist5k")
    x1 = data.test.tensors[0][:1]
    rows: dict[str, list[dict[str, float]]] = {"base": [], "svd": [], "dw": []}
    kept: dict[str, torch.nn.Module] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        base = baseline(data.train, Path(args.out) / "baselines", seed).eval()
        rows["base"].append({"acc": acc(base, data.test)})
        log(f"seed {seed}: baseline {rows['base'][-1]['acc']:.2f}")
        svd = copy.deepcopy(base)
        block = factorize_layer(svd, "fc1", compression=4)
        before = acc(svd, data.test)
        recover(svd, data.train, FINETUNE_SVD.replace(seed=seed), device="cpu", progress=False)
        rows["svd"].append({"acc": acc(svd, data.test), "before": before, "rank": block[0].out_features})
        log(f"seed {seed}: svd {rows['svd'][-1]}")
        dw = copy.deepcopy(base)
        for name, m in DW_MULTIPLIERS.items():
            to_depthwise_separable(dw, name, multiplier=m)
        before = acc(dw, data.test)
        recover(dw, data.train, RECOVER_DW.replace(seed=seed), teacher=base, device="cpu", progress=False)
        rows["dw"].append({"acc": acc(dw, data.test), "before": before})
        log(f"seed {seed}: dw {rows['dw'][-1]}")
        if seed == 0:
            kept = {"lenet5": base, "lenet5 fc1 SVD": svd, "lenet5 depthwise-separable": dw}
    compact_rows = []
    for name in ("mobilenet_tiny", "shufflenet_tiny"):
        accs = []
        for seed in range(args.compact_seeds):
            seed_everything(seed)
            student = create(name)
            recover(student, data.train, COMPACT.replace(seed=seed), teacher=kept["lenet5"], device="cpu",
                    progress=False)
            accs.append(acc(student, data.test))
            log(f"{name} seed {seed}: {accs[-1]:.2f}")
            if seed == 0:
                kept[name] = student.eval()
        compact_rows.append((name, accs))
    train_s = time.perf_counter() - start
    xb = data.test.tensors[0][:64]
    load_before = os.getloadavg()[0]
    lat = compare_latency(kept, xb, rounds=args.rounds, warmup=10, threads=2)
    load_after = os.getloadavg()[0]
    base_model, svd_model, dw_model = kept["lenet5"], kept["lenet5 fc1 SVD"], kept["lenet5 depthwise-separable"]
    macs = {k: count_macs(m, x1) for k, m in kept.items()}
    base_acc, base_sd = mean_std([r["acc"] for r in rows["base"]])
    svd_acc, svd_sd = mean_std([r["acc"] for r in rows["svd"]])
    dw_acc, dw_sd = mean_std([r["acc"] for r in rows["dw"]])
    svd_before, _ = mean_std([r["before"] for r in rows["svd"]])
    dw_before, _ = mean_std([r["before"] for r in rows["dw"]])
    fc1_ratio = layer_params(base_model.fc1) / layer_params(svd_model.fc1)
    mac_ratio = macs["lenet5"] / macs["lenet5 depthwise-separable"]
    lat_ratio = lat["lenet5"].median_ms / lat["lenet5 depthwise-separable"].median_ms
    lat_p10 = lat["lenet5"].p10_ms / lat["lenet5 depthwise-separable"].p10_ms
    ok_a = fc1_ratio >= 4 and base_acc - svd_acc <= 0.5
    ok_b = mac_ratio >= 3 and lat_ratio >= 1.5 and base_acc - dw_acc <= 1.0
    lines = ["## Low-rank factorization and depthwise-separable substitution (issue 8)", "",
             f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`. "
             f"Training and evaluation took {train_s:.0f} s. The machine is shared with other jobs (1-min load "
             f"average {load_before:.1f} before / {load_after:.1f} after the latency run, on {os.cpu_count()} cores): "
             f"latencies are noisy; candidates are interleaved round-robin ({args.rounds} rounds) so they share "
             "the noise, and p10 is the less preempted figure. Speed-up = median ratio (p10 ratio).", "",
             f"LeNet-5 baseline: {BASELINE.epochs} epochs Adam (cheaper than the Deep Compression benchmark's 20). "
             f"Accuracy on the 1,000 mnist5k test digits, mean +- std over {args.seeds} seeds.", "",
             markdown_table(
                 ["model", "acc % (no recovery)", "acc % (recovered)", "drop (pt)", "params", "fc1 params",
                  "MACs", "latency ms (median / p10)", "speed-up", "bar met"],
                 [["lenet5", "-", f"{base_acc:.2f} +- {base_sd:.2f}", "-", count_params(base_model),
                   f"{layer_params(base_model.fc1):,}", f"{macs['lenet5']:,}",
                   f"{lat['lenet5'].median_ms:.2f} / {lat['lenet5'].p10_ms:.2f}", "1.00x", "-"],
                  [f"fc1 SVD rank {rows['svd'][0]['rank']} + {FINETUNE_SVD.epochs} ep fine-tune",
                   f"{svd_before:.2f}", f"{svd_acc:.2f} +- {svd_sd:.2f}", f"{base_acc - svd_acc:+.2f}",
                   count_params(svd_model), f"{layer_params(svd_model.fc1):,} ({fc1_ratio:.2f}x fewer)",
                   f"{macs['lenet5 fc1 SVD']:,}",
                   f"{lat['lenet5 fc1 SVD'].median_ms:.2f} / {lat['lenet5 fc1 SVD'].p10_ms:.2f}",
                   f"{lat['lenet5'].median_ms / lat['lenet5 fc1 SVD'].median_ms:.2f}x "
                   f"({lat['lenet5'].p10_ms / lat['lenet5 fc1 SVD'].p10_ms:.2f}x)",
                   f">= 4x fc1, <= 0.5 pt: {'yes' if ok_a else 'NO'}"],
                  [f"depthwise-separable (multipliers {DW_MULTIPLIERS}) + {RECOVER_DW.epochs} ep KD",
                   f"{dw_before:.2f}", f"{dw_acc:.2f} +- {dw_sd:.2f}", f"{base_acc - dw_acc:+.2f}",
                   count_params(dw_model), f"{layer_params(dw_model.fc1):,}",
                   f"{macs['lenet5 depthwise-separable']:,} ({mac_ratio:.2f}x fewer)",
                   f"{lat['lenet5 depthwise-separable'].median_ms:.2f} / "
                   f"{lat['lenet5 depthwise-separable'].p10_ms:.2f}", f"{lat_ratio:.2f}x ({lat_p10:.2f}x)",
                   f">= 3x MACs, >= 1.5x latency (median), <= 1 pt: {'yes' if ok_b else 'NO'}"]]), "",
             f"Compact zoo models trained from scratch with logit distillation from the seed-0 baseline "
             f"({COMPACT.epochs} epochs, {args.compact_seeds} seed(s); short runs, not converged):", "",
             markdown_table(["model", "acc %", "params", "MACs", "latency ms (median / p10)"],
                            [[name, f"{mean_std(a)[0]:.2f}", count_params(kept[name]), macs[name],
                              f"{lat[name].median_ms:.2f} / {lat[name].p10_ms:.2f}"] for name, a in compact_rows]),
             "", "The depthwise-separable block of a conv with ``in`` input channels uses a depth multiplier m: "
             "each input channel's ``out x k^2`` filter slice is replaced by its best rank-m approximation "
             "(SVD), so the block starts close to the original layer. conv1 has a single input channel, "
             "so m = 4 there (m = 1 would make all 20 maps scaled copies of one filter). 1x1 convs run as one "
             "batched matmul (`PointwiseConv2d`), faster on CPU than torch's 1x1 convolution.", ""]
    path = write_result("factorize", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
