"""`deepshrink export FILE --format onnx|torchscript|safetensors`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_OK, console

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,28,28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def _user_model(spec: str) -> Any:
    """A fresh model from ``package.module:factory`` (or a zoo name), for an artifact of the user's own model."""
    from deepshrink.recipe.models import model_factory

    return model_factory(spec)()


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from deepshrink.artifact import load
    from deepshrink.core.errors import ConfigError
    from deepshrink.recipe.stages import export_model

    src = Path(args.file)
    if not src.is_file():
        raise ConfigError(f"artifact {src} does not exist")
    if args.format in ("onnx", "torchscript") and not args.input_shape:
        raise ConfigError(f"--format {args.format} traces the model: give one sample's shape with --input-shape, "
                          "e.g. 1,28,28")
    model = load(src, model=_user_model(args.model) if args.model else None)
    dest = Path(args.out) if args.out else src.with_suffix(SUFFIX[args.format])
    if dest.resolve() == src.resolve():
        raise ConfigError(f"--out {dest} would overwrite the artifact")
    example = torch.zeros(1, *args.input_shape) if args.input_shape else None
    export_model(model, dest, args.format, example)
    info = {"artifact": str(src), "format": args.format, "path": str(dest), "bytes": dest.stat().st_size}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        console().print(f"{src} -> {dest} ({args.format}, {info['bytes']:,} bytes)")
    return EXIT_OK


def register(sub: Any) -> None:
    exp = sub.add_parser("export", help="convert an artifact to ONNX, TorchScript or safetensors")
    exp.add_argument("file", help="a .dsk artifact")
    exp.add_argument("--format", required=True, choices=sorted(SUFFIX), help="target format")
    exp.add_argument("--out", help="output file (default: FILE with the format's suffix)")
    exp.add_argument("--input-shape", type=_shape, help="one sample's shape, e.g. 1,28,28 (ONNX/TorchScript tracing)")
    exp.add_argument("--model", metavar="PACKAGE.MODULE:FACTORY",
                     help="for an artifact of your own model (deepshrink run --model package.module:factory): "
                          "the factory that builds it, as given to run (files never name code that is imported)")
    exp.add_argument("--json", action="store_true", help="machine-readable output")
    exp.set_defaults(handler=cmd_export)
