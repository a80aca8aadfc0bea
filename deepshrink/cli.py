"""The ``deepshrink`` command. Errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from deepshrink.commands._common import EXIT_CORRUPT, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from deepshrink.core.errors import DeepShrinkError

EPILOG = """examples:
  deepshrink demo                        Deep Compression of LeNet-300-100 and LeNet-5 on real MNIST digits
  deepshrink demo --out runs/dc --seed 1 another folder and seed (baselines are reused when identical)
  deepshrink demo --recipe paper         the paper's own per-layer settings (Tables 2-3)
  deepshrink inspect runs/dc/lenet5.huffman.dsk --json
  deepshrink run recipes/deep_compression_lenet5.yaml --out runs/lenet5   a recipe end to end (resumes if interrupted)
  deepshrink run int8_ptq_lenet5 --model mypkg.nets:build --weights net.safetensors --data ./idx-folder --out runs/q
  deepshrink run minilm_ffn10_refit --out runs/minilm   all-MiniLM-L6-v2 on text (--model minilm --data pydocs)
  deepshrink export runs/lenet5/03-encode.dsk --format onnx --input-shape 1,28,28
  deepshrink report runs/lenet5          tables of a finished run; rewrites report.md and report.html
  deepshrink sensitivity --model lenet5 --out runs/sens   per-layer accuracy vs kept fraction and bits
  deepshrink auto --model lenet5 --max-drop 0.5 --time-budget 840 --out runs/auto   budget-driven compression
"""

# Sub-command modules under deepshrink/commands/, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = ("demo", "run", "inspect", "export", "report", "sensitivity", "auto")


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
    except BrokenPipeError:  # the reader went away (`deepshrink inspect F --json | head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return EXIT_OK
    except DeepShrinkError as exc:
        from deepshrink.core.errors import CorruptArtifactError, UnsupportedVersionError, UsageError

        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            return EXIT_USAGE
        return EXIT_CORRUPT if isinstance(exc, (CorruptArtifactError, UnsupportedVersionError)) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
