"""The ``deepshrink`` command. Errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepshrink.core.errors import DeepShrinkError

EPILOG = """examples:
  deepshrink demo                        Deep Compression of LeNet-300-100 and LeNet-5 on real MNIST digits
  deepshrink demo --out runs/dc --seed 1 another folder and seed (baselines are reused when identical)
  deepshrink demo --recipe paper         the paper's own per-layer settings (Tables 2-3)
  deepshrink inspect runs/dc/lenet5.huffman.dsk --json
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepshrink", description="Make trained PyTorch models smaller and faster.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"deepshrink {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="Deep Compression end to end on the embedded MNIST digits",
                          description="Train (or reuse) LeNet-300-100 and LeNet-5 baselines on mnist5k, prune, "
                                      "share weights, Huffman-code, write artifacts, report.json/.md and plots.")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--quick", action="store_true", help="one epoch per stage: a smoke run of a few seconds")
    demo.add_argument("--recipe", choices=["default", "paper"], default="default",
                      help="default: deepshrink's settings; paper: Han et al.'s Tables 2-3")
    demo.add_argument("--models", default="lenet300,lenet5", help="comma-separated zoo models")
    demo.add_argument("--no-reuse", action="store_true", help="retrain baselines even if a cached one matches")
    demo.add_argument("--json", action="store_true", help="print report.json instead of tables")

    ins = sub.add_parser("inspect", help="show what an artifact holds")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _version() -> str:
    from deepshrink import __version__

    return __version__


def _console():
    from rich.console import Console

    # Wide enough for the per-layer tables when the output is a pipe or a file.
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_demo(args: argparse.Namespace) -> int:
    from deepshrink.demo import run_demo

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
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

    console = _console()
    for name, m in report["models"].items():
        stages = [m["baseline"], *m["stages"]]
        console.print(rich_table(dcr.STAGE_HEADERS, [dcr.stage_cells(s, m["fp32_bytes"]) for s in stages],
                                 title=f"{name} on {report['dataset']}: stages"))
        console.print(rich_table(dcr.LAYER_HEADERS_SHORT,
                                 [dcr.table_cells(r, 2) for r in [*m["layers"], m["total"]]],
                                 title=f"{name}: per layer (as Deep Compression Tables 2-3)"))
        console.print("w/i = bits per stored weight of the value/index stream (P+Q packed, P+Q+H Huffman), "
                      "H = entropy; sizes in % of fp32 (total = whole file)")
        console.print(f"[bold]{name}[/]: {m['compression_ratio']:.1f}x smaller "
                      f"({m['fp32_bytes']:,} -> {m['artifact_bytes']:,} bytes), accuracy "
                      f"{100 * m['baseline']['accuracy']:.1f}% -> {100 * m['stages'][-1]['accuracy']:.1f}%, "
                      f"artifact {m['artifact']}\n")
    console.print(f"report: {out / 'report.md'}, {out / 'report.json'}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from deepshrink.artifact.inspect import describe
    from deepshrink.report.tables import rich_table

    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        console = _console()
        rows = [[t["name"], "x".join(map(str, t["shape"])), t["encoding"], t["sparsity"], t["weight_bits"],
                 t["index_bits"], t["bytes"], ", ".join(f"{k} {v}" for k, v in t["streams"].items())]
                for t in info["layers"]]
        console.print(rich_table(["tensor", "shape", "encoding", "sparsity", "weight bits", "index bits",
                                  "bytes", "bytes per stream"], rows, title=info["path"]))
        status = "ok" if info["checksum_ok"] else "MISMATCH"
        console.print(f"format v{info['format_version']}, {info['file_bytes']:,} bytes "
                      f"(header {info['header_bytes']}, metadata {info['meta_bytes']}), checksum {status}, "
                      f"architecture {info['architecture']}")
    if not info["checksum_ok"]:
        print(f"error: {args.file}: checksum mismatch, the file is corrupt", file=sys.stderr)
        return EXIT_CORRUPT
    return EXIT_OK


COMMANDS = {"demo": cmd_demo, "inspect": cmd_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DeepShrinkError as exc:
        from deepshrink.core.errors import CorruptArtifactError, UnsupportedVersionError

        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT if isinstance(exc, (CorruptArtifactError, UnsupportedVersionError)) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
