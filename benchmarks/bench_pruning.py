"""Pruning on mnist5k: 12x unstructured (magnitude, Taylor, activation) and 50% structured channels.

Published (Han et al. 2015, "Learning both Weights and Connections"): LeNet-300-100 and LeNet-5 keep 8% of
their weights (12x) at 1.59% / 0.77% error on full MNIST. Our bars: the same 12x within 0.3 points of the
baseline (mean of 3 seeds) for each criterion; structured 50% channels >= 1.8x lower latency (batch 64,
2 threads, median, candidates interleaved in one run) within 1 point after fine-tuning, at least equal to
Torch-Pruning with the same ratio and fine-tuning budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, git_rev, machine, mean_std, write_result  # noqa: E402

from deepshrink.data import load as load_data  # noqa: E402
from deepshrink.measure import compare_latency, count_macs, count_params, evaluate  # noqa: E402
from deepshrink.models import create  # noqa: E402
from deepshrink.pipelines.recipes import BASELINE_TRAIN, recipe  # noqa: E402
from deepshrink.prune import remove_masks, unstructured  # noqa: E402
from deepshrink.prune.structured import structured_with_report  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.train import TrainConfig, Trainer  # noqa: E402

# Han 2015's per-layer kept fractions (LeNet-5 fc1 7.5% instead of 8% to reach 12x overall), applied as
# per-layer sparsities for every criterion.
HAN = {"lenet300": {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
       "lenet5": {"conv1": 0.34, "conv2": 0.88, "fc1": 0.925, "fc2": 0.81}}
CRITERIA = {"magnitude": "l1", "taylor": "taylor", "activation": "activation", "taylor_train": "taylor_train"}
DEFAULT_CRITERIA = ("magnitude", "taylor", "activation")  # taylor_train runs when --criteria names it


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _acc(model: nn.Module, data) -> float:
    return 100 * evaluate(model, data.test).accuracy


def _fit(model: nn.Module, data, cfg: TrainConfig) -> None:
    Trainer(model, cfg, progress=False, device="cpu").fit(data.train)


def baseline_config(arch: str, epochs: int, baseline: str, seed: int) -> TrainConfig:
    """``adam``: Adam 1e-3 for ``epochs``; ``recipe``: the Deep Compression benchmark's baseline settings."""
    if baseline == "recipe":
        return BASELINE_TRAIN[arch].replace(seed=seed)
    return TrainConfig(epochs=epochs, optimizer="adam", lr=1e-3, batch_size=64, seed=seed)


def shifted_calibration(data, n: int = 1024, batch: int = 128, pixels: int = 2) -> list[tuple[torch.Tensor, ...]]:
    """The first ``n`` training images, each shifted by up to ``pixels`` (fixed seed), in batches.

    Gradient and activation criteria score weights on these rather than on the training images themselves:
    a trained model has memorised those, so their loss gradients are tiny and come from a few hard images;
    on shifted copies the loss reflects how the model generalises (one-shot 12x LeNet-300-100, validation
    split, seeds 0/1: Taylor 84.0/71.0 % on the training images, 88.6/86.4 % on shifted ones; magnitude 91.8/93.8).
    """
    x, y = data.train.tensors[0][:n], data.train.tensors[1][:n]
    g = torch.Generator().manual_seed(0)
    padded = nn.functional.pad(x, (pixels, pixels, pixels, pixels))
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i, (dx, dy) in enumerate(torch.randint(0, 2 * pixels + 1, (n, 2), generator=g).tolist()):
        out[i] = padded[i, ..., dy:dy + h, dx:dx + w]
    return list(zip(out.split(batch), y.split(batch)))


def make_criteria(calibration: str) -> dict[str, Any]:
    """``train``: criteria by name (Taylor with plain cross-entropy). ``shifted``: Taylor scored with the training
    loss (label smoothing 0.1, as both recipe baselines are trained)."""
    if calibration == "train":
        return dict(CRITERIA)
    from deepshrink.prune.importance import TaylorImportance

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)

    from deepshrink.prune.importance import TrainingTaylorImportance

    return {"magnitude": "l1", "taylor": TaylorImportance(loss_fn=loss), "activation": "activation",
            "taylor_train": TrainingTaylorImportance(loss_fn=loss)}


def unstructured_runs(data, models: list[str], seeds: list[int], epochs: int, retrain_epochs: int,
                      steps: int, baseline: str = "adam", calibration: str = "train",
                      criteria: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per (model, seed): baseline accuracy and, per criterion, [accuracy, compression]."""
    records = []
    for arch in models:
        for seed in seeds:
            torch.manual_seed(seed)
            base = create(arch)
            _fit(base, data, baseline_config(arch, epochs, baseline, seed))
            rec: dict[str, Any] = {"arch": arch, "seed": seed, "base": _acc(base, data)}
            _log(f"{arch} seed {seed} baseline {rec['base']:.2f}")
            calib = (torch.utils.data.DataLoader(data.train, batch_size=128, shuffle=False)
                     if calibration == "train" else shifted_calibration(data))
            for cname, crit in make_criteria(calibration).items():
                if cname not in (criteria or DEFAULT_CRITERIA):
                    continue
                model = copy.deepcopy(base)
                retrain = (recipe(arch).compression.retrain.replace(epochs=retrain_epochs, seed=seed)
                           if baseline == "recipe" else
                           TrainConfig(epochs=retrain_epochs, optimizer="adam", lr=1e-3, batch_size=64, seed=seed))
                unstructured(model, 0.9, importance=crit, overrides=HAN[arch], schedule="iterative",
                             schedule_kwargs={"steps": steps}, train=retrain, data=data.train, calibration=calib)
                remove_masks(model)
                weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
                kept = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
                rec[cname] = [_acc(model, data), 1 / kept]
                _log(f"{arch} seed {seed} {cname} acc {rec[cname][0]:.2f}, {1 / kept:.1f}x")
            records.append(rec)
    return records


def unstructured_table(records: list[dict[str, Any]], epochs: int, retrain_epochs: int, steps: int,
                       lines: list[str], baseline: str = "adam") -> None:
    rows, per_seed = [], []
    seeds = sorted({r["seed"] for r in records})
    names = [c for c in CRITERIA if all(c in r for r in records)]  # a --criteria subset: only those
    for arch in dict.fromkeys(r["arch"] for r in records):
        recs = [r for r in records if r["arch"] == arch]
        b, bsd = mean_std([r["base"] for r in recs])
        for cname in names:
            a, asd = mean_std([r[cname][0] for r in recs])
            ratio = mean_std([r[cname][1] for r in recs])[0]
            ok = "yes" if ratio >= 11.9 and round(b - a, 2) <= 0.3 else "NO"  # means of 0.1-pt steps: no float noise
            rows.append([arch, cname, f"{b:.2f} +- {bsd:.2f}", f"{a:.2f} +- {asd:.2f}", f"{a - b:+.2f}",
                         f"{ratio:.1f}x", ok])
        per_seed += [[arch, str(r["seed"]), f"{r['base']:.2f}", *(f"{r[c][0]:.2f}" for c in names)]
                     for r in recs]
    lines += [f"### Unstructured 12x (Han 2015 per-layer ratios), seeds {', '.join(map(str, seeds))}", "",
              (f"Baseline {epochs} epochs Adam (lr 1e-3, cosine)" if baseline == "adam" else
               "Baseline trained with the Deep Compression benchmark's settings (LeNet-300-100: SGD 0.1 momentum "
               "0.9, weight decay 5e-4, label smoothing 0.1, 40 epochs; LeNet-5: Adam 2e-3, label smoothing 0.1, "
               "10 epochs; cosine)") + f"; iterative prune/retrain, {steps} steps x "
              f"{retrain_epochs} epoch(s) " + ("Adam lr 1e-3" if baseline == "adam" else
                                               "with the Deep Compression recipe's retraining settings (LeNet-300-100: "
                                               "SGD 0.05, weight decay 5e-4, label smoothing 0.1; LeNet-5: Adam 1e-3, "
                                               "label smoothing 0.1; cosine)") + " (Han's schedule: each step removes the same fraction "
              "of the survivors). Mean +- std over the seeds.", "",
              markdown_table(["model", "criterion", "baseline acc %", "pruned acc %", "delta (pt)",
                              "weights removed", ">= 12x, <= 0.3 pt"], rows), "",
              "Per seed (acc %):", "",
              markdown_table(["model", "seed", "baseline", *names], per_seed), "",
              "Han 2015 on full MNIST: LeNet-300-100 1.64% -> 1.59% error, LeNet-5 0.80% -> 0.77%, both 12x.",
              "magnitude = |w|; Taylor = |w dL/dw| over 8 calibration batches of 128; activation = |w_ij| x "
              "mean|x_j| (input activation, the unstructured form of the activation criterion)."
              + (" taylor_train = |mean over the retraining steps of w dL/dw| (training loss, every optimizer step "
                 "of the retraining before each pruning round; the first round, before any retraining, scores "
                 "on the calibration batches as Taylor does)." if "taylor_train" in names else ""), ""]


def _tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[head])
    pruner.step()
    return model


STRUCT_MODELS = ("cnn", "resnet8", "mobilenetv2")
FT_LR = 3e-3  # fine-tuning after structured pruning: 1e-3 left both tools 4-5 pt lower (see the ablation)
STRUCT_HEADER = ["model", "method", "acc % (mean +- std)", "per seed", "params", "MACs", "median ms", "speedup",
                 ">= 1.8x, <= 1 pt"]


def _ds_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, Any]:
    """deepshrink with its defaults (the settings a user gets)."""
    return structured_with_report(model, x, ratio=ratio)


def structured_part(data, models: list[str], seeds: list[int], epochs: int, ft_epochs: int, rounds: int,
                    lines: list[str], partial: Any = None) -> None:
    try:
        import torch_pruning  # noqa: F401
        have_tp = True
    except ImportError:
        have_tp = False
    rows, diag = [], []
    x64 = data.test.tensors[0][:64]
    train_threads = torch.get_num_threads()
    for arch in models:
        accs: dict[str, list[float]] = {}
        cands: dict[str, nn.Module] = {}
        for seed in seeds:
            torch.manual_seed(seed)
            base = create(arch)
            _fit(base, data, TrainConfig(epochs=epochs, optimizer="adam", lr=2e-3, batch_size=64, seed=seed))
            base.eval()
            accs.setdefault("baseline", []).append(_acc(base, data))
            _log(f"{arch} seed {seed} baseline {accs['baseline'][-1]:.2f}")
            pruned, rep = _ds_prune(base, x64[:2], 0.5)
            these = {"baseline": base, "deepshrink": pruned}
            if have_tp:
                these["torch-pruning"] = _tp_prune(base, x64[:2], 0.5)
            ft = TrainConfig(epochs=ft_epochs, optimizer="adam", lr=FT_LR, batch_size=64, seed=seed)
            for name in list(these)[1:]:
                _fit(these[name], data, ft)
                these[name].eval()
                accs.setdefault(name, []).append(_acc(these[name], data))
                _log(f"{arch} seed {seed} {name} fine-tuned {accs[name][-1]:.2f}")
            if not cands:
                cands, first_rep = these, rep
        torch.set_num_threads(2)
        lat = compare_latency(cands, x64, rounds=rounds, warmup=5, threads=2, block=5)
        torch.set_num_threads(train_threads)
        b_ms = lat["baseline"].median_ms
        b_acc = mean_std(accs["baseline"])[0]
        for name, m in cands.items():
            speed = b_ms / lat[name].median_ms
            a, asd = mean_std(accs[name])
            bar = "-" if name == "baseline" else (
                "yes" if speed >= 1.8 and b_acc - a <= 1.0 else "NO")
            rows.append([arch, name, f"{a:.2f} +- {asd:.2f}", " / ".join(f"{v:.1f}" for v in accs[name]),
                         f"{count_params(m):,}", f"{count_macs(m, x64[:1]):,}",
                         f"{lat[name].median_ms:.2f} (p10 {lat[name].p10_ms:.2f}, p90 {lat[name].p90_ms:.2f})",
                         f"{speed:.2f}x", bar])
        _log(f"{arch} latency ms: " + ", ".join(f"{k} {v.median_ms:.2f}" for k, v in lat.items()))
        base, pruned = cands["baseline"], cands["deepshrink"]
        odd = [g.name for g in first_rep.groups if g.after % 8]
        diag.append(f"- {arch}: MACs {count_macs(base, x64[:1]):,} -> {count_macs(pruned, x64[:1]):,} "
                    f"({count_macs(base, x64[:1]) / max(1, count_macs(pruned, x64[:1])):.2f}x fewer); "
                    f"groups pruned {len(first_rep.groups)}; channel counts not a multiple of 8: "
                    f"{', '.join(odd) or 'none'}; left intact: "
                    + "; ".join(f"{v}" for v in list(first_rep.skipped.values())[:4]))
        tp = cands.get("torch-pruning")
        if tp is not None:
            same = (count_params(tp) == count_params(pruned) and count_macs(tp, x64[:1]) == count_macs(pruned, x64[:1]))
            diag.append(f"- {arch}: deepshrink and Torch-Pruning models have "
                        + ("the same parameter and MAC counts, so their latency difference "
                           f"({lat['deepshrink'].median_ms / lat['torch-pruning'].median_ms - 1:+.1%}) is timing noise"
                           if same else "different parameter or MAC counts"))
        if partial is not None:
            partial(rows, diag)
    # unstructured zeros on dense kernels: same latency
    torch.manual_seed(0)
    dense = create("cnn").eval()
    sparse = copy.deepcopy(dense)
    unstructured(sparse, 0.9, permanent=True)
    masked = copy.deepcopy(dense)
    unstructured(masked, 0.9)
    torch.set_num_threads(2)
    lat = compare_latency({"dense": dense, "90% zeros": sparse, "90% masks attached": masked}, x64,
                          rounds=rounds, warmup=3, threads=2, block=5)
    torch.set_num_threads(train_threads)
    d = lat["dense"].median_ms
    lines += ["### Structured: 50% of channels, then fine-tuning; latency batch 64, 2 threads", "",
              f"Baseline {epochs} epochs Adam (lr 2e-3); each pruned model then gets the same {ft_epochs} epochs "
              f"of fine-tuning (Adam lr {FT_LR:g}, cosine). deepshrink runs with its defaults; Torch-Pruning with "
              "MetaPruner + MagnitudeImportance(p=2) (its defaults), the classifier ignored. Accuracy: mean "
              f"over seeds {', '.join(map(str, seeds))}; latency of the seed-{seeds[0]} models, medians measured "
              f"**interleaved round-robin in one run** ({rounds} rounds of 5 consecutive calls per model), so only ratios within this table "
              "compare." + ("" if have_tp else " Torch-Pruning is not installed: its rows are missing."), "",
              markdown_table(STRUCT_HEADER, rows), "",
              "Why is (or is not) a pruned model faster:", "", *diag,
              f"- unstructured 90% zeros on the `cnn`: {d / lat['90% zeros'].median_ms:.2f}x "
              f"(dense kernels multiply the zeros); with masks attached {d / lat['90% masks attached'].median_ms:.2f}x "
              "(the mask multiply runs every call). Only removing channels shrinks the GEMMs.",
              "- N:M (2:4) masks are stored sparse but give no CPU speedup (no sparse tensor-core path on CPU).", ""]


ABLATION = [  # (label, deepshrink keyword arguments or None for Torch-Pruning, fine-tuning lr)
    ("deepshrink default (normalized + norm scales), ft lr 1e-3", {}, 1e-3),
    ("deepshrink normalized, no norm scales (old default), ft lr 1e-3", {"norms": False}, 1e-3),
    ("deepshrink sum + norm scales (= Torch-Pruning's score), ft lr 1e-3", {"aggregate": "sum"}, 1e-3),
    ("Torch-Pruning, ft lr 1e-3", None, 1e-3),
    ("deepshrink default, ft lr 3e-3", {}, 3e-3),
    ("deepshrink normalized, no norm scales, ft lr 3e-3", {"norms": False}, 3e-3),
    ("Torch-Pruning, ft lr 3e-3", None, 3e-3),
    ("deepshrink default, internal channels only (residual kept), ft lr 3e-3", "internal", 3e-3),
    ("deepshrink default, 2 steps (25% then 1/3 of the rest, ft split between them), ft lr 3e-3", "steps", 3e-3),
]


def ablation_part(data, models: list[str], seeds: list[int], epochs: int, ft_epochs: int,
                  lines: list[str]) -> None:
    """Why structured pruning loses accuracy: group-score aggregation, norm scales, residual channels and
    the fine-tuning learning rate, each at the same fine-tuning budget."""
    rows = []
    x2 = data.test.tensors[0][:2]
    for arch in models:
        res: dict[str, list[float]] = {}
        base_accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            base = create(arch)
            _fit(base, data, TrainConfig(epochs=epochs, optimizer="adam", lr=2e-3, batch_size=64, seed=seed))
            base.eval()
            base_accs.append(_acc(base, data))
            for label, kw, lr in ABLATION:
                if kw is None:
                    model = _tp_prune(base, x2, 0.5)
                elif kw == "internal":
                    model = _internal_only(base, x2)
                elif kw == "steps":  # same final widths as one shot (n -> 3n/4 -> n/2), half the ft budget between
                    model = structured_with_report(base, x2, ratio=0.25)[0]
                    _fit(model, data, TrainConfig(epochs=max(1, ft_epochs // 2), optimizer="adam", lr=lr,
                                                  batch_size=64, seed=seed))
                    model = structured_with_report(model.eval(), x2, ratio=1 / 3 + 1e-6)[0]
                else:
                    model = structured_with_report(base, x2, ratio=0.5, **kw)[0]
                at_once = _acc(model.eval(), data)
                left = ft_epochs - max(1, ft_epochs // 2) if kw == "steps" else ft_epochs
                _fit(model, data, TrainConfig(epochs=max(1, left), optimizer="adam", lr=lr, batch_size=64, seed=seed))
                res.setdefault(label, []).append(_acc(model.eval(), data))
                res.setdefault(label + " (before ft)", []).append(at_once)
                _log(f"ablation {arch} seed {seed} {label}: {at_once:.1f} -> {res[label][-1]:.2f}")
        b = mean_std(base_accs)[0]
        for label, _, _ in ABLATION:
            a, sd = mean_std(res[label])
            rows.append([arch, label, f"{mean_std(res[label + ' (before ft)'])[0]:.1f}", f"{a:.2f} +- {sd:.2f}",
                         " / ".join(f"{v:.1f}" for v in res[label]), f"{a - b:+.2f}"])
    lines += [f"### Why structured pruning loses accuracy (ablation, 50% of channels, {ft_epochs} fine-tuning "
              f"epochs, seeds {', '.join(map(str, seeds))})", "",
              f"Baseline {epochs} epochs Adam lr 2e-3, mean {mean_std(base_accs)[0]:.2f}. Every row gets the same "
              "fine-tuning budget (Adam, cosine); only the score, the channels pruned or the lr change.", "",
              markdown_table(["model", "variant", "acc before ft %", "acc after ft %", "per seed", "delta (pt)"],
                             rows), ""]


def _internal_only(base: nn.Module, x: torch.Tensor) -> nn.Module:
    """Prune only groups with one producer: residual streams (several producers joined by additions) keep
    their width."""
    from deepshrink.prune.graph import build_graph

    _, graph = build_graph(copy.deepcopy(base), x)
    single = [ms for ms in graph.groups().values() if sum(m.role == "out" for m in ms) == 1]
    ratio = {"*": 0.0, **{m.module: 0.5 for ms in single for m in ms if m.role == "out"}}
    return structured_with_report(base, x, ratio=ratio)[0]


def _seeds(text: str) -> list[int]:
    """``3`` means seeds 0, 1, 2; ``0,2`` lists them."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected a count or a comma list of integers, got {text!r}") from None
    return list(range(vals[0])) if len(vals) == 1 and "," not in text else vals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="unstructured,structured", help="comma list: unstructured, structured, ablation")
    ap.add_argument("--models", default="", help="comma list (default: lenet300,lenet5 for unstructured; "
                                                  "cnn,resnet8,mobilenetv2 for structured)")
    ap.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a comma list")
    ap.add_argument("--epochs", type=int, default=12, help="unstructured baseline epochs (--baseline adam)")
    ap.add_argument("--baseline", choices=("adam", "recipe"), default="adam",
                    help="unstructured baseline training: Adam 1e-3 for --epochs, or the Deep Compression "
                         "benchmark's settings (deepshrink.pipelines.recipes.BASELINE_TRAIN)")
    ap.add_argument("--retrain-epochs", type=int, default=1, help="unstructured retraining epochs per step")
    ap.add_argument("--steps", type=int, default=3, help="unstructured iterative prune/retrain steps")
    ap.add_argument("--calibration", choices=("train", "shifted"), default="train",
                    help="unstructured: data the Taylor/activation criteria score on (shifted = the first 1,024 "
                         "training images moved by up to 2 pixels; Taylor then uses the training loss)")
    ap.add_argument("--criteria", default="",
                    help="unstructured: comma subset of magnitude,taylor,activation,taylor_train (default: the "
                         "first three)")
    ap.add_argument("--struct-epochs", type=int, default=4)
    ap.add_argument("--ft-epochs", type=int, default=4, help="structured fine-tuning epochs (both tools)")
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds (structured part)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, 3 latency rounds")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="threads while training (latency is always timed with 2); 1 is fastest on a "
                         "shared machine")
    ap.add_argument("--raw-out", default="", help="unstructured: also write the per-seed records (JSON)")
    ap.add_argument("--merge", default="", help="unstructured: build the table from --raw-out files instead")
    ap.add_argument("--name", default="pruning", help="result file name (benchmarks/results/NAME.md)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"unstructured", "structured", "ablation"}
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {sorted(unknown)}")
    seeds = _seeds(args.seeds)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        seeds, args.epochs, args.retrain_epochs, args.steps = seeds[:1], 1, 1, 1
        args.struct_epochs, args.ft_epochs, args.rounds = 1, 1, 3
    torch.set_num_threads(args.train_threads)
    data = load_data("mnist5k")
    start = time.perf_counter()
    lines = ["## Pruning on mnist5k (issue 3)", "",
             f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`.", "",
             "Accuracy on the 1,000 mnist5k test digits (one digit = 0.1 point)."
             + (" **--quick smoke run: numbers mean nothing.**" if args.quick else ""), ""]
    if "unstructured" in parts:
        umodels = [m for m in models if m in HAN] if models else list(HAN)
        bad = [m for m in models if m not in HAN and m not in STRUCT_MODELS]
        if bad or not umodels and "structured" not in parts:
            raise SystemExit(f"--models: unstructured part runs {sorted(HAN)}, got {models}")
        if args.merge:  # records of separate (e.g. one-seed) runs, written with --raw-out
            records = [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())]
        elif umodels:
            records = unstructured_runs(data, umodels, seeds, args.epochs, args.retrain_epochs, args.steps,
                                        args.baseline, args.calibration,
                                        [c for c in args.criteria.split(",") if c] or None)
            if args.raw_out:
                Path(args.raw_out).write_text(json.dumps(records))
        if args.merge or umodels:
            unstructured_table(records, args.epochs, args.retrain_epochs, args.steps, lines, args.baseline)
            if args.calibration == "shifted":
                lines += ["Calibration (Taylor, activation): the first 1,024 training images, each shifted by up to 2 "
                          "pixels (fixed seed), not the images themselves; Taylor scores with the training loss "
                          "(cross-entropy with label smoothing 0.1). See `shifted_calibration` in the script.", ""]
            write_result(args.name, "\n".join(lines) + "\n")
    if "structured" in parts:
        smodels = [m for m in models if m in STRUCT_MODELS] if models else list(STRUCT_MODELS)

        def partial(rows: list, diag: list) -> None:
            table = markdown_table(STRUCT_HEADER, rows)
            write_result(args.name, "\n".join([*lines, "(partial: structured part still running)", "",
                                               table, "", *diag]) + "\n")

        structured_part(data, smodels, seeds, args.struct_epochs, args.ft_epochs, args.rounds, lines, partial)
    if "ablation" in parts:
        amodels = [m for m in models if m in STRUCT_MODELS] if models else ["resnet8"]
        ablation_part(data, amodels, seeds, args.struct_epochs, args.ft_epochs, lines)
        write_result(args.name, "\n".join(lines) + "\n")
    lines.append(f"Total benchmark time: {time.perf_counter() - start:.0f} s.")
    path = write_result(args.name, "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
