"""`deepshrink report DIR`: show a run folder's report and re-render report.md/.html from report.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from deepshrink.commands.run import print_run, without_histograms
    from deepshrink.core.errors import ConfigError

    folder = Path(args.dir)
    path = folder / "report.json" if folder.is_dir() else folder
    if not path.is_file():
        raise ConfigError(f"{folder}: no report.json (is this the --out folder of a finished `deepshrink run`?)")
    state = path.parent / "state.json"
    if state.is_file():
        try:
            complete = json.loads(state.read_text(encoding="utf-8")).get("complete", True)
        except (OSError, ValueError, AttributeError):
            complete = True  # not a run state of ours: judge the report alone
        if complete is False:
            raise ConfigError(f"{path.parent} holds a run in progress (state.json: not complete); its report.json "
                              "is not this run's result: finish it with the same `deepshrink run` command")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or "stages" not in report or "baseline" not in report:
        raise ConfigError(f"{path} is not a run report (no baseline/stages; demo reports are shown by demo)")
    if not args.no_render:
        from deepshrink.report.run import write_run_report

        write_run_report(report, path.parent)
    if args.json:
        print(json.dumps(without_histograms(report), indent=2, sort_keys=True))
    else:
        print_run(report, str(path.parent))
    return EXIT_OK


def register(sub: Any) -> None:
    rep = sub.add_parser("report", help="show a run's report and re-render report.md/.html",
                         description="Read DIR/report.json of a `deepshrink run`, print its tables and rewrite "
                                     "report.md and the self-contained report.html.")
    rep.add_argument("dir", help="the --out folder of a run (or its report.json)")
    rep.add_argument("--no-render", action="store_true", help="only print; do not rewrite the report files")
    rep.add_argument("--json", action="store_true", help="print the report as JSON (without histograms)")
    rep.set_defaults(handler=cmd_report)
