"""`deepshrink sensitivity`: per-layer accuracy versus kept fraction, bits and rank, as data and a plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_OK, check_val_fraction, console, seed_arg


def _numbers(text: str, what: str, kind: type) -> tuple:
    """The comma-separated numbers of an option (ConfigError when there are none or one is not a number)."""
    from deepshrink.core.errors import ConfigError

    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated {'integers' if kind is int else 'numbers'}, "
                          f"got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} gives no value ({text!r})")
    return values


def _floats(text: str, what: str) -> tuple[float, ...]:
    return _numbers(text, what, float)


def _ints(text: str, what: str) -> tuple[int, ...]:
    return _numbers(text, what, int)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from deepshrink.auto.inputs import prepare
    from deepshrink.core.fileio import ensure_dir
    from deepshrink.measure.accuracy import evaluate
    from deepshrink.sensitivity import scan, write_sensitivity
    from deepshrink.core.errors import ConfigError, UsageError
    from deepshrink.sensitivity.scan import check_grid, check_settings

    try:  # bad option values are usage errors (exit 2)
        keeps = _floats(args.keeps, "--keeps")
        bits = _ints(args.bits, "--bits")
        ranks = _ints(args.ranks, "--ranks") if args.ranks else ()
        check_grid("kept fraction", keeps, 1e-6, 1.0)  # the values before the model is even built
        check_grid("bit width", bits, 1, 16, integer=True)
        check_val_fraction(args.val_fraction)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None

    def check(model: Any) -> None:  # on the built model, before the baseline trains (seconds to minutes)
        try:
            check_settings(model, layers=layers, keeps=keeps, bits=bits, ranks=ranks)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None

    out = ensure_dir(args.out)
    inputs = prepare(args.model, weights=args.weights, data=args.data, out=out, val_fraction=args.val_fraction,
                     seed=args.seed, train_epochs=args.train_epochs, check=check)
    result = scan(inputs.model, lambda m: evaluate(m, inputs.val).accuracy, layers=layers, keeps=keeps, bits=bits,
                  ranks=ranks)
    paths = write_sensitivity(result, out, f"{args.model} on {args.data}")
    if args.json:
        print(json.dumps({**result.to_dict(), "files": {k: str(v) for k, v in paths.items()}}, indent=2))
        return EXIT_OK
    _print(result, Path(args.out), inputs.origin)
    return EXIT_OK


def _print(result: Any, out: Path, origin: str) -> None:
    con = console()
    curves = list(result.layers.values())
    if curves:
        from deepshrink.report.tables import rich_table

        con.print(rich_table(["layer", "weights", *[f"keep {k:g}" for k in curves[0].keeps]],
                             [[c.name, c.numel, *[100 * s for s in c.keep_scores]] for c in curves],
                             title="validation accuracy %, one layer pruned (no retraining)"))
        con.print(rich_table(["layer", *[f"{b} bits" for b in curves[0].bits]],
                             [[c.name, *[100 * s for s in c.bit_scores]] for c in curves],
                             title="validation accuracy %, one layer shared by k-means"))
    con.print(f"model: {origin}; unmodified: {100 * result.baseline:.2f}%")
    con.print(f"data: {out / 'sensitivity.json'}, plot: {out / 'sensitivity.png'}, table: {out / 'sensitivity.md'}")


def add_model_args(p: Any) -> None:
    """--model/--weights/--data/--val-fraction/--seed/--train-epochs, shared with `deepshrink auto`."""
    p.add_argument("--model", required=True, help="zoo name (lenet300, lenet5, ...) or package.module:factory")
    p.add_argument("--weights", help="trained weights (.safetensors or .dsk); without it the model is trained "
                                     "on the training split first (cached in --out)")
    p.add_argument("--data", default="mnist5k", help="dataset name or folder (default: mnist5k)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the training data held out for decisions (default: 0.2)")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed (default: 0)")
    p.add_argument("--train-epochs", type=int, help="baseline training epochs when no --weights are given")


def register(sub: Any) -> None:
    p = sub.add_parser("sensitivity", help="per-layer accuracy vs kept fraction, bits and rank",
                       description="Compress one layer at a time (no retraining) and measure validation "
                                   "accuracy: versus kept fraction (magnitude pruning), versus weight bits "
                                   "(k-means sharing) and optionally versus rank (SVD). Writes sensitivity.json, "
                                   ".md and .png.")
    add_model_args(p)
    p.add_argument("--out", default="out/sensitivity", help="output folder (default: out/sensitivity)")
    p.add_argument("--layers", help="comma-separated layer names (default: every Linear/Conv layer)")
    p.add_argument("--keeps", default="1,0.5,0.3,0.2,0.12,0.08,0.05,0.035,0.025,0.015,0.01",
                   help="kept fractions to try")
    p.add_argument("--bits", default="8,6,5,4,3,2", help="weight bits to try")
    p.add_argument("--ranks", help="ranks to try on Linear layers (default: none)")
    p.add_argument("--json", action="store_true", help="print the data as JSON instead of tables")
    p.set_defaults(handler=cmd_sensitivity)
