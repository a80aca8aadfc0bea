"""`deepshrink run RECIPE --model ... --data ... --out DIR`: a recipe end to end, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deepshrink.commands._common import (
    EXIT_OK, EXIT_USAGE, add_threads_option, apply_threads, console, model_args_type, seed_arg,
)


def print_run(report: dict[str, Any], out: str | None) -> None:
    """The stage table (relative to the baseline) and the per-layer table of a run report."""
    from deepshrink.report.run import LAYER_HEADERS, STAGE_HEADERS, layer_rows, stage_cells, stage_rows, \
        summary_line
    from deepshrink.report.tables import rich_table

    con = console()
    con.print(rich_table(STAGE_HEADERS, [stage_cells(r) for r in stage_rows(report)],
                         title=f"{report['recipe']}: {report['model']} on {report['dataset']}"))
    rows = layer_rows(report)
    if rows:
        con.print(rich_table(LAYER_HEADERS, rows, title="layers (baseline vs final stage)"))
    con.print(summary_line(report))
    if out:
        con.print(f"report: {out}/report.html, {out}/report.md, {out}/report.json")


def without_histograms(report: dict[str, Any]) -> dict[str, Any]:
    """The report minus per-layer histogram data (long arrays), for ``--json`` on a terminal or a pipe."""
    out = dict(report)
    out["baseline"] = {k: v for k, v in report["baseline"].items() if k != "histograms"}
    out["stages"] = [{k: v for k, v in s.items() if k != "histograms"} for s in report["stages"]]
    return out


def _progress_printer(quiet: bool) -> Any:
    from rich.console import Console

    err = Console(stderr=True)

    def on_event(e: dict[str, Any]) -> None:
        if quiet:
            return
        head = f"[{e['index'] + 1}/{e['total']}] {e['name']} ({e['kind']})"
        if e["event"] == "start":
            err.print(f"{head} ...")
        elif e["event"] == "skip":
            err.print(f"{head} skipped: {e['reason']}")
        elif e["event"] == "done":
            rec = e.get("record") or {}
            parts = []
            if rec.get("accuracy") is not None:
                parts.append(f"accuracy {100 * rec['accuracy']:.2f}%")
            if rec.get("artifact_bytes") is not None:
                parts.append(f"{rec['artifact_bytes']:,} bytes")
            if e.get("seconds") is not None:
                parts.append(f"{e['seconds']:.1f} s")
            err.print(f"{head} done" + (f": {', '.join(parts)}" if parts else ""))

    return on_event


def cmd_run(args: argparse.Namespace) -> int:
    from deepshrink.recipe.loader import RecipeError, read_recipe
    from deepshrink.recipe.runner import run_recipe

    try:
        recipe, lines = read_recipe(args.recipe)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.seed is not None:
        recipe = recipe.model_copy(update={"seed": args.seed})
    if args.weights and not args.model and not recipe.model:
        print("error: --weights needs --model (or model: in the recipe)", file=sys.stderr)
        return EXIT_USAGE
    apply_threads(args.threads)
    out = args.out or f"out/run/{recipe.name}"
    model_args = json.loads(args.model_args) if args.model_args else None
    result = run_recipe(recipe, model=args.model, model_args=model_args, data=args.data, weights=args.weights,
                        out=out, quick=args.quick, restart=args.restart,
                        progress=False if args.no_progress else None, latency=True if args.latency else None,
                        on_event=_progress_printer(args.no_progress), lines=lines, source=args.recipe)
    if args.json:
        print(json.dumps(without_histograms(result.report), indent=2, sort_keys=True))
    else:
        print_run(result.report, out)
    return EXIT_OK


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run a compression recipe (YAML) on a model and dataset",
                         description="Run the stages of RECIPE in order, writing one artifact per stage, "
                                     "state.json (an interrupted run resumes) and report.json/.md/.html into "
                                     "--out.")
    run.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe in recipes/")
    run.add_argument("--model", help="zoo name or package.module:factory (default: the recipe's model:)")
    run.add_argument("--model-args", type=model_args_type, help="JSON object of arguments for the model factory")
    run.add_argument("--weights", help="trained weights (.safetensors or .dsk): leading finetune stages are skipped")
    run.add_argument("--data", help="dataset name or folder, or a text dataset (pydocs) for sentence encoders "
                                    "(default: the recipe's dataset:)")
    run.add_argument("--out", help="output folder (default: out/run/<recipe name>)")
    run.add_argument("--seed", type=seed_arg, help="override the recipe's seed")
    run.add_argument("--quick", action="store_true",
                     help="smoke run: 1 epoch per training, 1,024 training samples (text: 64 calibration sentences)")
    run.add_argument("--restart", action="store_true", help="ignore state.json in --out and start over")
    run.add_argument("--latency", action="store_true", help="also measure latency of every stage")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    run.add_argument("--json", action="store_true", help="print the report as JSON (without histograms)")
    add_threads_option(run)
    run.set_defaults(handler=cmd_run)
