"""`deepshrink inspect`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deepshrink.commands._common import EXIT_CORRUPT, EXIT_OK, console

def cmd_inspect(args: argparse.Namespace) -> int:
    from deepshrink.artifact.inspect import describe
    from deepshrink.report.tables import rich_table

    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        con = console()
        rows = [[t["name"], "x".join(map(str, t["shape"])), t["encoding"], t["sparsity"], t["weight_bits"],
                 t["index_bits"], t["bytes"], ", ".join(f"{k} {v}" for k, v in t["streams"].items())]
                for t in info["layers"]]
        con.print(rich_table(["tensor", "shape", "encoding", "sparsity", "weight bits", "index bits",
                                  "bytes", "bytes per stream"], rows, title=info["path"]))
        status = "ok" if info["checksum_ok"] else "MISMATCH"
        con.print(f"format v{info['format_version']}, {info['file_bytes']:,} bytes "
                      f"(header {info['header_bytes']}, metadata {info['meta_bytes']}), checksum {status}, "
                      f"architecture {info['architecture']}")
    if not info["checksum_ok"]:
        print(f"error: {args.file}: checksum mismatch, the file is corrupt", file=sys.stderr)
        return EXIT_CORRUPT
    return EXIT_OK


def register(sub: Any) -> None:
    ins = sub.add_parser("inspect", help="show what an artifact holds")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(handler=cmd_inspect)
