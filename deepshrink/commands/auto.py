"""`deepshrink auto`: meet an accuracy, size or latency budget by per-layer pruning and weight sharing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_ERROR, EXIT_OK, check_val_fraction, console


def _parse_bytes(text: str) -> int:
    """``27000``, ``26.5KiB``, ``1.5MB``... as a byte count."""
    from deepshrink.core.errors import UsageError

    units = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmib")
    unit = raw[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--target-bytes must be a size like 27000, 26KiB or 1.5MB, got {text!r}") from None
    if value < 1:
        raise UsageError(f"--target-bytes must be at least 1 byte, got {text!r}")
    return int(value)


def _config(args: argparse.Namespace, base: Any) -> Any:
    """The AutoConfig of the options (ConfigError on a bad value)."""
    from deepshrink.auto import AutoConfig
    from deepshrink.auto.inputs import compression_training

    retrain, finetune = compression_training(args.model, base.retrain, base.finetune)
    if args.retrain_epochs is not None:
        retrain = retrain.replace(epochs=args.retrain_epochs)
    if args.finetune_epochs is not None:
        finetune = finetune.replace(epochs=args.finetune_epochs)

    return AutoConfig(
        # no --max-drop: 0.5 points, unless a size target alone asks for the smallest loss at that size
        # (a latency target alone keeps the 0.5: compression here does not change latency; AutoConfig)
        max_drop_pt=args.max_drop if args.max_drop is not None or args.target_bytes or args.target_latency
        else 0.5,
        target_bytes=_parse_bytes(args.target_bytes) if args.target_bytes else None,
        target_latency_ms=args.target_latency, time_budget_s=args.time_budget,
        retrain=retrain.replace(seed=args.seed, augment=args.augment),
        finetune=finetune.replace(seed=args.seed, augment=args.augment),
        seed=args.seed, confidence=args.confidence,
        explore=args.explore)


def cmd_auto(args: argparse.Namespace) -> int:
    from deepshrink.auto import AutoConfig, auto_compress
    from deepshrink.auto.inputs import prepare
    from deepshrink.core.errors import ConfigError, UsageError
    from deepshrink.core.fileio import ensure_dir

    base = AutoConfig(max_drop_pt=1.0)
    try:  # every option value is checked here, before any work: a bad one is a usage error (exit 2)
        cfg = _config(args, base)
        check_val_fraction(args.val_fraction)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    out = ensure_dir(args.out)
    log = (lambda _m: None) if args.json or args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    inputs = prepare(args.model, weights=args.weights, data=args.data, out=out, val_fraction=args.val_fraction,
                     seed=args.seed, train_epochs=args.train_epochs)
    log(f"model: {inputs.origin}; fit {len(inputs.fit)} / validation {len(inputs.val)} / test {len(inputs.data.test)}")
    res = auto_compress(inputs.model, train=inputs.fit, val=inputs.val, test=inputs.data.test,
                        example_inputs=inputs.example, config=cfg, out_dir=out, model_name=args.model,
                        dataset=args.data, resume=not args.fresh, log=log)
    if args.json:
        from deepshrink.commands.run import without_histograms

        print(json.dumps(without_histograms(res.report), indent=2, sort_keys=True))
    else:
        _print(res.report, Path(args.out))
    return EXIT_OK if res.report["budget_met"] else EXIT_ERROR


def _print(report: dict[str, Any], out: Path) -> None:
    from deepshrink.commands.run import print_run
    from deepshrink.report.run import TRIAL_HEADERS, trial_rows
    from deepshrink.report.tables import rich_table

    con = console()
    con.print(rich_table(TRIAL_HEADERS, trial_rows(report), title="settings tried (validation split)"))
    print_run(report, str(out))
    checks = ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in report["budget_checks"].items())
    con.print(f"budget {'met' if report['budget_met'] else 'NOT met'} ({checks}); "
              f"{report['seconds']:.0f} s of {report['budget']['time_budget_s']:.0f} s; "
              f"artifact {report['artifact']} ({report['artifact_bytes']:,} bytes)")


def register(sub: Any) -> None:
    from deepshrink.commands.sensitivity import add_model_args

    p = sub.add_parser("auto", help="automatic compression to an accuracy, size or latency budget",
                       description="Scan per-layer sensitivity, then choose per-layer kept fractions and weight "
                                   "bits, prune, retrain, share weights, fine-tune and store as Deep Compression "
                                   "(Huffman) within --time-budget. Decisions use a validation split held out of "
                                   "the training data; the report gives test accuracy and every setting tried "
                                   "(Pareto front). Exit code 1 if the budget was not met. Re-running with the "
                                   "same settings resumes from the last accepted step.",
                       epilog="example: deepshrink auto --model lenet5 --max-drop 0.5 --time-budget 840 "
                              "--out runs/auto5")
    add_model_args(p)
    p.add_argument("--max-drop", type=float, help="largest accuracy drop in points (default 0.5 when no "
                                                  "other budget is given)")
    p.add_argument("--target-bytes", help="artifact size to reach, e.g. 20000 or 20KiB")
    p.add_argument("--target-latency", type=float, help="median latency to reach, ms (checked on the result)")
    p.add_argument("--time-budget", type=float, default=900.0, help="wall seconds for the search (default 900)")
    p.add_argument("--retrain-epochs", type=int,
                   help="epochs of retraining per pruning step (default: the Deep Compression recipe's for "
                        "lenet300/lenet5, 8 / 5 epochs; else 2)")
    p.add_argument("--finetune-epochs", type=int,
                   help="epochs of centroid fine-tuning (default: the recipe's 3 for lenet300/lenet5; else 2)")
    p.add_argument("--confidence", type=float, default=1.0, metavar="Z",
                   help="a result is within --max-drop when its validation drop plus Z standard errors of "
                        "that drop is (default 1; 0 judges the measured drop alone)")
    p.add_argument("--augment", metavar="SPEC",
                   help="move/mirror training images at random while retraining and fine-tuning: shift:N "
                        "(up to N pixels), hflip, or both (shift:4,hflip); image data only")
    p.add_argument("--out", default="out/auto", help="output folder (default: out/auto)")
    p.add_argument("--explore", action="store_true",
                   help="spend spare time on single-layer pruning steps and lower bit widths (more decisions on "
                        "the validation split: see docs/auto.md)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming a run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_auto)
