"""The ``deepshrink`` command. Errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from deepshrink.commands._common import EXIT_CORRUPT, EXIT_ERROR, EXIT_INTERRUPTED
from deepshrink.core.errors import DeepShrinkError

EPILOG = """examples:
  deepshrink demo                        Deep Compression of LeNet-300-100 and LeNet-5 on real MNIST digits
  deepshrink demo --out runs/dc --seed 1 another folder and seed (baselines are reused when identical)
  deepshrink demo --recipe paper         the paper's own per-layer settings (Tables 2-3)
  deepshrink inspect runs/dc/lenet5.huffman.dsk --json
"""

# Sub-command modules under deepshrink/commands/, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = ("demo", "inspect")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepshrink", description="Make trained PyTorch models smaller and faster.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"deepshrink {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"deepshrink.commands.{name}").register(sub)
    return p


def _version() -> str:
    from deepshrink import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DeepShrinkError as exc:
        from deepshrink.core.errors import CorruptArtifactError, UnsupportedVersionError

        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT if isinstance(exc, (CorruptArtifactError, UnsupportedVersionError)) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
