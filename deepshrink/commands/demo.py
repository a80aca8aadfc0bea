"""`deepshrink demo`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_OK, add_threads_option, apply_threads, console, seed_arg


def cmd_demo(args: argparse.Namespace) -> int:
    from deepshrink.demo import run_demo

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    apply_threads(args.threads)
    report = run_demo(args.out, seed=args.seed, quick=args.quick, models=models, recipe_name=args.recipe,
                      reuse=not args.no_reuse)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK
    _print_demo(report, Path(args.out))
    return EXIT_OK


def _print_demo(report: dict[str, Any], out: Path) -> None:
    from deepshrink.report import deep_compression as dcr
    from deepshrink.report.tables import rich_table

    con = console()
    for name, m in report["models"].items():
        stages = [m["baseline"], *m["stages"]]
        con.print(rich_table(dcr.STAGE_HEADERS, [dcr.stage_cells(s, m["fp32_bytes"]) for s in stages],
                                 title=f"{name} on {report['dataset']}: stages"))
        con.print(rich_table(dcr.LAYER_HEADERS_SHORT,
                                 [dcr.table_cells(r, 2) for r in [*m["layers"], m["total"]]],
                                 title=f"{name}: per layer (as Deep Compression Tables 2-3)"))
        con.print("w/i = bits per stored weight of the value/index stream (P+Q packed, P+Q+H Huffman), "
                      "H = entropy; sizes in % of fp32 (total = whole file)")
        con.print(f"[bold]{name}[/]: {m['compression_ratio']:.1f}x smaller "
                      f"({m['fp32_bytes']:,} -> {m['artifact_bytes']:,} bytes), accuracy "
                      f"{100 * m['baseline']['accuracy']:.1f}% -> {100 * m['stages'][-1]['accuracy']:.1f}%, "
                      f"artifact {m['artifact']}\n")
    con.print(f"report: {out / 'report.md'}, {out / 'report.json'}")


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="Deep Compression end to end on the embedded MNIST digits",
                          description="Train (or reuse) LeNet-300-100 and LeNet-5 baselines on mnist5k, prune, "
                                      "share weights, Huffman-code, write artifacts, report.json/.md and plots.")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--seed", type=seed_arg, default=0, help="random seed (default: 0)")
    demo.add_argument("--quick", action="store_true", help="one epoch per stage: a smoke run of a few seconds")
    demo.add_argument("--recipe", choices=["default", "paper"], default="default",
                      help="default: deepshrink's settings; paper: Han et al.'s Tables 2-3")
    demo.add_argument("--models", default="lenet300,lenet5", help="comma-separated zoo models")
    demo.add_argument("--no-reuse", action="store_true", help="retrain baselines even if a cached one matches")
    demo.add_argument("--json", action="store_true", help="print report.json instead of tables")
    add_threads_option(demo)
    demo.set_defaults(handler=cmd_demo)
