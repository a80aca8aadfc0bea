"""Factorization benchmark (issue 8) in separately runnable parts, assembled into one result page.

Parts (``--parts``, comma-separated; default all):

- ``svd``: SVD of LeNet-5's 800x500 fc1 + fine-tuning: >= 4x fewer fc1 parameters, <= 0.5 pt drop.
- ``dwsep``: zoo CNNs (LeNet-5 and ``cnn``) with their convolutions replaced by depthwise-separable
  blocks initialised from the original kernels, recovered by logit + feature distillation from the
  original model: >= 3x fewer MACs and <= 1 pt drop (latency in the ``latency`` part).
- ``compact``: mobilenet_tiny / shufflenet_tiny trained directly and distilled from LeNet-5.
- ``combined``: a compact LeNet-5 (fc1 SVD) + Deep Compression (pruning + k-means quantization +
  Huffman) against Deep Compression alone on the same LeNet-5 baselines: smaller at equal accuracy?
- ``latency``: batch 64, 2 threads, every model saved by the parts above, interleaved round-robin;
  as trained (NCHW) and deployed (batch norms folded + channels-last, applied to baseline and
  converted model alike): >= 1.5x lower latency for the depthwise-separable conversion.

Each part stores its numbers in ``<out>/parts/<part>.json`` (models in ``<out>/models``); every run
rewrites benchmarks/results/factorize.md from all parts present, so a quiet-machine rerun of the
latency alone is ``python benchmarks/bench_factorize.py --parts latency``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import command, git_rev, machine, mean_std, write_result  # noqa: E402

from deepshrink.artifact import StoragePolicy, load, save  # noqa: E402
from deepshrink.core.errors import DeepShrinkError  # noqa: E402
from deepshrink.core.fileio import atomic_write_text  # noqa: E402
from deepshrink.data import load as load_data  # noqa: E402
from deepshrink.factorize import (  # noqa: E402
    channels_last,
    factorize_layer,
    fold_bn,
    recover,
    recover_features,
    to_depthwise_separable,
)
from deepshrink.measure import compare_latency, count_macs, count_params, evaluate  # noqa: E402
from deepshrink.models import create  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.train import TrainConfig, Trainer, seed_everything  # noqa: E402

PARTS = ("svd", "dwsep", "compact", "combined", "latency")
BASELINE = {"lenet5": TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine"),
            "cnn": TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=2e-3, schedule="cosine")}
FINETUNE_SVD = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine")
RECOVER_DW = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")
DW_MULTIPLIERS = {"conv1": 4, "conv2": 1}
DW_BN = {"lenet5": [], "cnn": [("conv1", "bn1"), ("conv2", "bn2")]}
COMPACT = TrainConfig(epochs=20, batch_size=64, optimizer="adam", lr=3e-3, schedule="cosine")
COMBINED_RANK = 32
COMBINED_RECOVER = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-4, schedule="cosine",
                               label_smoothing=0.1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def acc(model: torch.nn.Module, test) -> float:
    return 100.0 * evaluate(model, test).accuracy


def layer_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def baseline(name: str, train, folder: Path, seed: int) -> torch.nn.Module:
    """Train a zoo model with BASELINE[name] or reuse the artifact of an identical earlier run."""
    cfg = BASELINE[name].replace(seed=seed)
    key = hashlib.sha256(json.dumps([name, "mnist5k", asdict(cfg)], sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{name}.seed{seed}.{key}.dsk"
    if path.exists():
        try:
            return load(path).eval()
        except DeepShrinkError:
            pass
    seed_everything(seed)
    model = create(name)
    Trainer(model, cfg, device="cpu", progress=False).fit(train)
    folder.mkdir(parents=True, exist_ok=True)
    save(model.eval(), path, StoragePolicy(sparse=False, coding="packed"))
    return model


def keep_model(out: Path, name: str, model: torch.nn.Module) -> None:
    (out / "models").mkdir(parents=True, exist_ok=True)
    save(model.eval(), out / "models" / f"{name}.dsk", StoragePolicy(sparse=False, coding="packed"))


def stamp(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    return {"machine": machine(), "commit": git_rev(), "command": command(), "seconds": round(seconds),
            "seeds": args.seeds, "load": os.getloadavg()[0]}


def seed_rows(args: argparse.Namespace, out: Path, tag: str, settings: Any, compute) -> list[dict[str, Any]]:
    """Rows for seeds 0..seeds-1, each cached in ``<out>/rows`` with its settings (so seeds can run in
    separate processes); seeds below ``--seed-start`` are only read from the cache."""
    rows = []
    settings = json.loads(json.dumps(settings, default=str))
    for seed in range(args.seeds):
        path = out / "rows" / f"{tag}.seed{seed}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("settings") == settings:
                rows.append(cached["row"])
                continue
        if seed < args.seed_start:
            continue
        row = compute(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"settings": settings, "row": row}))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- parts


def part_svd(args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    rows = []
    for seed in range(args.seeds):
        base = baseline("lenet5", data.train, out / "baselines", seed)
        svd = copy.deepcopy(base)
        block = factorize_layer(svd, "fc1", compression=4)
        before = acc(svd, data.test)
        recover(svd, data.train, FINETUNE_SVD.replace(seed=seed), device="cpu", progress=False)
        rows.append({"base": acc(base, data.test), "before": before, "acc": acc(svd, data.test),
                     "rank": block[0].out_features, "fc1_base": layer_params(base.fc1),
                     "fc1": layer_params(svd.fc1), "params": count_params(svd), "macs": count_macs(svd, data.x1)})
        log(f"svd seed {seed}: {rows[-1]}")
        if seed == 0:
            keep_model(out, "lenet5", base)
            keep_model(out, "lenet5 fc1 SVD", svd)
    return {"rows": rows}


def part_dwsep(args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name in ("lenet5", "cnn"):

        def one(seed: int, name: str = name) -> dict[str, Any]:
            base = baseline(name, data.train, out / "baselines", seed)
            dw = copy.deepcopy(base)
            for layer, m in DW_MULTIPLIERS.items():
                to_depthwise_separable(dw, layer, multiplier=m)
            before = acc(dw, data.test)
            recover_features(dw, base, data.train, RECOVER_DW.replace(seed=seed), list(DW_MULTIPLIERS),
                             device="cpu", progress=False)
            dw.eval()
            row = {"base": acc(base, data.test), "before": before, "acc": acc(dw, data.test),
                   "params_base": count_params(base), "params": count_params(dw),
                   "macs_base": count_macs(base, data.x1), "macs": count_macs(dw, data.x1)}
            log(f"dwsep {name} seed {seed}: {row}")
            if seed == 0:
                keep_model(out, name, base)
                keep_model(out, f"{name} depthwise-separable", dw)
            return row

        settings = [asdict(BASELINE[name]), asdict(RECOVER_DW), DW_MULTIPLIERS, "features"]
        res[name] = seed_rows(args, out, f"dwsep.{name}", settings, one)
    return res


def part_compact(args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    from deepshrink.demo import _baseline
    from deepshrink.pipelines.recipes import recipe

    res: dict[str, Any] = {}
    for seed in range(args.compact_seeds):
        rec = recipe("lenet5", "default", seed=seed)
        teacher, _ = _baseline(rec, data.train, Path(args.dc_out) / "baselines", seed, True, False)
        teacher.eval()
        for name in ("mobilenet_tiny", "shufflenet_tiny"):
            for mode in ("direct", "distilled"):
                seed_everything(seed)
                student = create(name)
                recover(student, data.train, COMPACT.replace(seed=seed),
                        teacher=teacher if mode == "distilled" else None, device="cpu", progress=False)
                student.eval()
                row = {"acc": acc(student, data.test), "teacher": acc(teacher, data.test),
                       "params": count_params(student), "macs": count_macs(student, data.x1)}
                res.setdefault(f"{name} {mode}", []).append(row)
                log(f"compact {name} {mode} seed {seed}: {row}")
                if seed == 0:
                    keep_model(out, f"{name} {mode}", student)
    return res


def part_combined(args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    """LeNet-5 -> fc1 SVD (rank COMBINED_RANK) -> Deep Compression, against Deep Compression alone."""
    from deepshrink.demo import _baseline
    from deepshrink.pipelines.deep_compression import DeepCompression, LayerSetting
    from deepshrink.pipelines.recipes import recipe

    def one(seed: int) -> dict[str, Any]:
        rec = recipe("lenet5", "default", seed=seed)
        base, _ = _baseline(rec, data.train, Path(args.dc_out) / "baselines", seed, True, False)
        base.eval()
        alone = _dc_alone(args, rec, base, data, out, seed)
        small = copy.deepcopy(base)
        factorize_layer(small, "fc1", rank=COMBINED_RANK)
        svd_acc = acc(small, data.test)
        recover_features(small, base, data.train, COMBINED_RECOVER.replace(seed=seed), ["fc1"], device="cpu",
                         progress=False)
        small.eval()
        rec_acc = acc(small, data.test)
        layers = {k: v for k, v in rec.compression.layers.items() if k != "fc1"}
        layers["fc1.0"] = LayerSetting(args.factor_keep, 4)
        layers["fc1.1"] = LayerSetting(args.factor_keep, 4)
        cfg = dataclasses.replace(rec.compression, layers=layers)
        seed_everything(seed)
        res = DeepCompression(cfg, progress=False).run(small, data.train, data.test, data.x1,
                                                       out / "combined" / f"seed{seed}", tag="lenet5_svd")
        fp32 = 4 * count_params(base)
        row = {"base": acc(base, data.test), "alone_acc": alone["acc"], "alone_bytes": alone["bytes"],
               "alone_source": alone["source"], "svd_acc": svd_acc, "recovered_acc": rec_acc,
               "compact_params": count_params(small), "acc": 100 * res.final.accuracy,
               "bytes": res.final.artifact_bytes, "fp32_bytes": fp32, "nonzeros": res.final.nonzeros,
               "alone_nonzeros": alone["nonzeros"], "roundtrip": res.roundtrip_max_abs_diff}
        log(f"combined seed {seed}: {row}")
        return row

    settings = [COMBINED_RANK, args.factor_keep, asdict(COMBINED_RECOVER)]
    rows = seed_rows(args, out, "combined", settings, one)
    return {"rows": rows, "rank": COMBINED_RANK, "factor_keep": args.factor_keep}


def _dc_alone(args: argparse.Namespace, rec, base: torch.nn.Module, data, out: Path, seed: int) -> dict[str, Any]:
    """Deep Compression alone on the same baseline: the bench_deep_compression run if present, else run it."""
    from deepshrink.pipelines.deep_compression import DeepCompression

    report = Path(args.dc_out) / "default" / f"seed{seed}" / "report.json"
    if report.exists():
        m = json.loads(report.read_text())["models"].get("lenet5")
        if m and abs(100 * m["baseline"]["accuracy"] - acc(base, data.test)) < 1e-6:
            return {"acc": 100 * m["stages"][-1]["accuracy"], "bytes": m["artifact_bytes"],
                    "nonzeros": m["stages"][-1]["nonzeros"], "source": str(report)}
    seed_everything(seed)
    res = DeepCompression(rec.compression, progress=False).run(base, data.train, data.test, data.x1,
                                                               out / "combined" / f"alone_seed{seed}", tag="lenet5")
    return {"acc": 100 * res.final.accuracy, "bytes": res.final.artifact_bytes, "nonzeros": res.final.nonzeros,
            "source": "run here"}


def _deployed(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Batch norms folded (zoo ``cnn`` names them; compact models by conv -> BN pairs) and channels-last."""
    model = copy.deepcopy(model).eval()
    arch = name.split(" ")[0]
    fold_bn(model, DW_BN.get(arch) if arch in DW_BN else None)
    return channels_last(model)


def part_latency(args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    folder = out / "models"
    models = {p.stem: load(p).eval() for p in sorted(folder.glob("*.dsk"))} if folder.exists() else {}
    if not models:
        raise SystemExit(f"no saved models in {folder}: run the svd/dwsep/compact parts first")
    x = data.test.tensors[0][:64]  # one input channel: NCHW and channels-last are the same memory
    cands: dict[str, Any] = {}
    for name, m in models.items():
        cands[f"{name} | nchw"] = m
        cands[f"{name} | deployed"] = _deployed(m, name)
    rounds = 10 if args.quick else args.rounds
    before = os.getloadavg()[0]
    lat = compare_latency(cands, x, rounds=rounds, warmup=3 if args.quick else 10, threads=2)
    res = {"rounds": rounds, "load_before": before, "load_after": os.getloadavg()[0], "quick": args.quick,
           "models": {}}
    for name, m in models.items():
        res["models"][name] = {
            "macs": count_macs(m, data.x1), "params": count_params(m),
            **{f"{lay}_{k}": getattr(lat[f"{name} | {lay}"], f"{k}_ms") for lay in ("nchw", "deployed")
               for k in ("median", "p10")}}
    return res


# -------------------------------------------------------------------------------------------- report


def _ms(m: dict[str, Any], lay: str) -> str:
    return f"{m[f'{lay}_median']:.2f} / {m[f'{lay}_p10']:.2f}"


def _speed(lat: dict[str, Any] | None, base: str, new: str, lay: str) -> tuple[float | None, str]:
    if not lat or base not in lat["models"] or new not in lat["models"]:
        return None, "not measured"
    b, n = lat["models"][base], lat["models"][new]
    r = b[f"{lay}_median"] / n[f"{lay}_median"]
    text = f"{r:.2f}x ({b[f'{lay}_p10'] / n[f'{lay}_p10']:.2f}x)"
    return (None, text + " --quick, not a result") if lat.get("quick") else (r, text)


def _ms_mean(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    return mean_std([r[key] for r in rows])


def report(parts: dict[str, dict[str, Any]]) -> str:
    lines = ["## Low-rank factorization, depthwise-separable substitution, compact models (issue 8)", "",
             "Written by `python benchmarks/bench_factorize.py` from the parts stored so far; each part's own "
             "machine, commit, command and run time are listed under it. Accuracy on the 1,000 mnist5k test "
             "digits (one digit = 0.1 point), mean +- std over seeds. Latency: batch 64, 2 threads, all "
             "models interleaved round-robin, median / p10 ms; speed-up = median ratio (p10 ratio).", ""]

    def meta(name: str) -> None:
        p = parts[name]["meta"]
        took = f"{p['seconds']} s" if p["seconds"] > 2 else "rows read from the per-seed cache of earlier runs"
        lines.extend([f"Part `{name}`: {p['machine']}; commit {p['commit']}; `{p['command']}`; "
                      f"{took}; 1-min load {p['load']:.1f}.", ""])

    lat = parts.get("latency")
    if "svd" in parts:
        rows = parts["svd"]["rows"]
        b, bs = _ms_mean(rows, "base")
        a, sd = _ms_mean(rows, "acc")
        ratio = rows[0]["fc1_base"] / rows[0]["fc1"]
        ok = ratio >= 4 and b - a <= 0.5
        lines += ["### SVD of LeNet-5's fc1 (bar: >= 4x fewer fc1 parameters, <= 0.5 pt)", ""]
        meta("svd")
        lines += [markdown_table(
            ["model", "acc % before fine-tune", "acc %", "drop (pt)", "fc1 params", "params", "bar met"],
            [["lenet5 (4 ep Adam)", "-", f"{b:.2f} +- {bs:.2f}", "-", f"{rows[0]['fc1_base']:,}", "-", "-"],
             [f"fc1 SVD rank {rows[0]['rank']} + {FINETUNE_SVD.epochs} ep fine-tune",
              f"{_ms_mean(rows, 'before')[0]:.2f}", f"{a:.2f} +- {sd:.2f}", f"{b - a:+.2f}",
              f"{rows[0]['fc1']:,} ({ratio:.2f}x fewer)", f"{rows[0]['params']:,}", "yes" if ok else "NO"]]), ""]
    if "dwsep" in parts:
        lines += ["### Depthwise-separable conversion (bar: >= 3x fewer MACs, >= 1.5x lower latency, <= 1 pt)",
                  "", f"conv1 and conv2 of each CNN become depthwise (multipliers {DW_MULTIPLIERS}) + pointwise "
                  "blocks initialised from the original kernels (per-input-channel SVD), then "
                  f"{RECOVER_DW.epochs} epochs of logit (T=4, alpha=0.7) + feature distillation (MSE between the "
                  "converted block's and the original conv's outputs, `recover_features` on deepshrink.distill) "
                  "from the original model. Latency 'deployed' = batch norms folded into the convs and "
                  "channels-last memory, applied to the baseline and the converted model alike; 'nchw' = both as "
                  "trained.", ""]
        meta("dwsep")
        table = []
        busy = f" (load {lat['load_before']:.1f}: rerun quietly)" if lat and lat["load_before"] > 1.5 else ""
        for name, rows in ((k, v) for k, v in parts["dwsep"].items() if k != "meta"):
            b, bs = _ms_mean(rows, "base")
            a, sd = _ms_mean(rows, "acc")
            mac = rows[0]["macs_base"] / rows[0]["macs"]
            sp_n, txt_n = _speed(lat, name, f"{name} depthwise-separable", "nchw")
            sp_d, txt_d = _speed(lat, name, f"{name} depthwise-separable", "deployed")
            ok = mac >= 3 and b - a <= 1.0 and sp_d is not None and sp_d >= 1.5
            table.append([name, f"{b:.2f} +- {bs:.2f}", f"{_ms_mean(rows, 'before')[0]:.2f}", f"{a:.2f} +- {sd:.2f}",
                          f"{b - a:+.2f}", f"{rows[0]['params_base']:,} -> {rows[0]['params']:,}",
                          f"{rows[0]['macs_base']:,} -> {rows[0]['macs']:,} ({mac:.2f}x)", txt_n, txt_d,
                          (("yes" if ok else "NO") + busy) if sp_d is not None else "latency pending"])
        lines += [markdown_table(["model", "baseline acc %", "converted, no recovery", "recovered acc %",
                                  "drop (pt)", "params", "MACs", "speed-up nchw", "speed-up deployed", "bar met"],
                                 table), ""]
    if lat:
        lines += ["### Latency of every saved model", ""]
        meta("latency")
        lines += [f"{lat['rounds']} rounds{' (--quick: a smoke run, not a result)' if lat['quick'] else ''}; "
                  f"1-min load {lat['load_before']:.1f} before / {lat['load_after']:.1f} after.", "",
                  markdown_table(["model (seed 0)", "params", "MACs", "nchw ms", "deployed ms"],
                                 [[n, f"{m['params']:,}", f"{m['macs']:,}", _ms(m, "nchw"), _ms(m, "deployed")]
                                  for n, m in lat["models"].items()]), ""]
    if "compact" in parts:
        lines += [f"### Compact zoo models ({COMPACT.epochs} epochs Adam {COMPACT.lr} cosine)", "",
                  "Trained directly (cross-entropy) or distilled (logits, T=4, alpha=0.7) from the Deep "
                  "Compression benchmark's LeNet-5 baseline of the same seed.", ""]
        meta("compact")
        rows = parts["compact"]
        lines += [markdown_table(["model", "acc %", "teacher acc %", "params", "MACs"],
                                 [[n, f"{_ms_mean(r, 'acc')[0]:.2f} +- {_ms_mean(r, 'acc')[1]:.2f}",
                                   f"{_ms_mean(r, 'teacher')[0]:.2f}", f"{r[0]['params']:,}", f"{r[0]['macs']:,}"]
                                  for n, r in rows.items() if n != "meta"]), ""]
    if "combined" in parts:
        c = parts["combined"]
        rows = c["rows"]
        b = _ms_mean(rows, "base")[0]
        aa, asd = _ms_mean(rows, "alone_acc")
        ab = _ms_mean(rows, "alone_bytes")[0]
        ca, csd = _ms_mean(rows, "acc")
        cb, cbs = _ms_mean(rows, "bytes")
        fp32 = rows[0]["fp32_bytes"]
        ok = cb < ab and ca >= aa - 0.1
        lines += ["### Compact model + pruning + quantization vs pruning + quantization alone (LeNet-5)", "",
                  f"Same baselines as the Deep Compression benchmark (recipe `default`). Compact: fc1 SVD rank "
                  f"{c['rank']} (800x500 -> 800x{c['rank']} + {c['rank']}x500), {COMBINED_RECOVER.epochs} epochs of "
                  "logit + fc1-feature distillation from the baseline, then Deep Compression with the default "
                  f"recipe's settings for conv1/conv2/fc2 and keep {c['factor_keep']}, 4-bit for both fc1 factors. "
                  "Bytes = the whole final artifact file. 'Alone' reuses the Deep Compression benchmark's run on the "
                  "same baseline when present (source column), else runs it.", ""]
        meta("combined")
        lines += [markdown_table(
            ["pipeline", "baseline acc %", "final acc %", "drop (pt)", "non-zeros", "artifact bytes", "ratio",
             "smaller & accuracy >= alone - 0.1 pt"],
            [["Deep Compression alone", f"{b:.2f}", f"{aa:.2f} +- {asd:.2f}", f"{b - aa:+.2f}",
              f"{_ms_mean(rows, 'alone_nonzeros')[0]:,.0f}", f"{ab:,.0f}", f"{fp32 / ab:.1f}x", "-"],
             [f"fc1 SVD r{c['rank']} + Deep Compression", f"{b:.2f}", f"{ca:.2f} +- {csd:.2f}", f"{b - ca:+.2f}",
              f"{_ms_mean(rows, 'nonzeros')[0]:,.0f}", f"{cb:,.0f} +- {cbs:,.0f}", f"{fp32 / cb:.1f}x",
              ("yes" if ok else "NO") + f" ({ab / cb:.2f}x smaller)"]]), "",
                  "Per seed: " + "; ".join(
                      f"seed {i}: alone {r['alone_acc']:.1f}% {r['alone_bytes']:,} B, compact SVD {r['svd_acc']:.1f}% "
                      f"-> recovered {r['recovered_acc']:.1f}% -> {r['acc']:.1f}% {r['bytes']:,} B"
                      for i, r in enumerate(rows)) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=0,
                    help="dwsep/combined: compute seeds from here on; lower seeds only from the row cache")
    ap.add_argument("--compact-seeds", type=int, default=1)
    ap.add_argument("--out", default="out/bench/factorize")
    ap.add_argument("--dc-out", default="out/bench/deep_compression",
                    help="the Deep Compression benchmark's folder (its baselines and default-recipe reports)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--factor-keep", type=float, default=0.3, help="combined: kept fraction of each fc1 factor")
    ap.add_argument("--quick", action="store_true", help="latency: 10 rounds (a smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (latency always uses 2)")
    args = ap.parse_args()
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.seeds < 1 or args.compact_seeds < 1 or args.rounds < 1:
        raise SystemExit("--seeds, --compact-seeds and --rounds must be >= 1")
    bad = [p for p in wanted if p not in PARTS]
    if bad:
        raise SystemExit(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    data = SimpleNamespace(train=splits.train, test=splits.test, x1=splits.test.tensors[0][:1])
    out = Path(args.out)
    store = out / "parts"
    store.mkdir(parents=True, exist_ok=True)
    runners = {"svd": part_svd, "dwsep": part_dwsep, "compact": part_compact, "combined": part_combined,
               "latency": part_latency}
    for name in PARTS:
        if name in wanted:
            start = time.perf_counter()
            res = runners[name](args, data, out)
            res["meta"] = stamp(args, time.perf_counter() - start)
            atomic_write_text(store / f"{name}.json", json.dumps(res, indent=1))
            log(f"part {name} done")
    parts = {p: json.loads((store / f"{p}.json").read_text()) for p in PARTS if (store / f"{p}.json").exists()}
    path = write_result("factorize", report(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
