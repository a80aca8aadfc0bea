"""`deepshrink export FILE --format onnx|torchscript|safetensors`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from deepshrink.commands._common import EXIT_OK, console, model_args_type

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,28,28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def _user_model(spec: str, src: Path, model_args: str | None) -> Any:
    """A fresh model from ``package.module:factory`` (or a zoo name), for an artifact of the user's own model,
    built with ``model_args`` (JSON) or else the factory arguments the artifact recorded (`run --model-args`)."""
    from deepshrink.codec import container
    from deepshrink.recipe.models import model_factory

    if model_args is not None:
        kwargs = json.loads(model_args)
    else:
        arch = container.read_container(src, verify=False).meta.get("arch")  # load verifies the file
        kwargs = arch.get("kwargs") if isinstance(arch, dict) else None
        kwargs = kwargs if isinstance(kwargs, dict) else {}
    return model_factory(spec, kwargs)()


def _is_encoder(model: Any) -> bool:
    from deepshrink.models.zoo import ARCH_ATTR

    return (getattr(model, ARCH_ATTR, None) or {}).get("zoo") == "hf_bert"


MAX_SAMPLE_ELEMENTS = 1 << 26  # 256 MB of float32: no model here takes more per sample


def _inputs(model: Any, shape: tuple[int, ...] | None, batch: int, seed: int) -> tuple[Any, ...]:
    """Inputs of ``batch`` samples: random values of ``shape`` for an image model; for a sentence encoder,
    random token ids of sequence length ``shape[0]`` (default 128 or the model's maximum) with a mask whose
    rows end in padding."""
    import torch

    from deepshrink.core.errors import ConfigError

    gen = torch.Generator().manual_seed(seed)
    if not _is_encoder(model):
        if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise ConfigError(f"--input-shape {','.join(map(str, shape))} is {math.prod(shape):,} values a sample; "
                              f"the trace needs one real sample (at most {MAX_SAMPLE_ELEMENTS:,})")
        return (torch.rand(batch, *shape, generator=gen),)
    length = shape[0] if shape else min(128, model.max_length)
    vocab = len(model.token_map) if model.token_map is not None else int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, max(1, length - row * length // (2 * batch)):] = 0
    return ids, mask


def cmd_export(args: argparse.Namespace) -> int:
    from deepshrink.artifact import load
    from deepshrink.core.errors import ConfigError
    from deepshrink.export.onnx import default_dynamic_axes
    from deepshrink.recipe.stages import export_model

    src = Path(args.file)
    if not src.is_file():
        raise ConfigError(f"artifact {src} does not exist")
    if args.model_args is not None and not args.model:
        raise ConfigError("--model-args needs --model (the factory they are passed to)")
    model = load(src, model=_user_model(args.model, src, args.model_args) if args.model else None)
    encoder = _is_encoder(model)
    if args.format in ("onnx", "torchscript") and not args.input_shape and not encoder:
        raise ConfigError(f"--format {args.format} traces the model: give one sample's shape with --input-shape, "
                          "e.g. 1,28,28")
    if encoder and args.input_shape and (len(args.input_shape) != 1 or args.input_shape[0] > model.max_length):
        raise ConfigError(f"--input-shape of a sentence encoder is one sequence length up to {model.max_length}, "
                          f"got {','.join(map(str, args.input_shape))}")
    dest = Path(args.out) if args.out else src.with_suffix(SUFFIX[args.format])
    if dest.resolve() == src.resolve():
        raise ConfigError(f"--out {dest} would overwrite the artifact")
    example = _inputs(model, args.input_shape, 1, 0) if args.format in ("onnx", "torchscript") else None
    axes = default_dynamic_axes(example, 1, sequence=True) if encoder and args.format == "onnx" else None
    export_model(model, dest, args.format, example, dynamic_axes=axes)
    info = {"artifact": str(src), "format": args.format, "path": str(dest), "bytes": dest.stat().st_size}
    if args.format == "onnx":
        info["max_abs_diff"] = _verify(model, dest, _inputs(model, args.input_shape, 3, 1))
        info["tolerance"] = dict(zip(("rtol", "atol"), _tolerance(model)))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        checked = ("not checked: onnxruntime is not installed" if info.get("max_abs_diff", 0) is None else
                   f"ONNX Runtime matches PyTorch within {info['max_abs_diff']:.2g}") if args.format == "onnx" else ""
        console().print(f"{src} -> {dest} ({args.format}, {info['bytes']:,} bytes{'; ' + checked if checked else ''})")
    return EXIT_OK


#: ONNX vs PyTorch tolerances (numpy allclose: |ort - torch| <= atol + rtol |torch|): float (and weight-only
#: quantized) models; models that quantize activations per call (Int8Linear), where a float rounding
#: difference upstream moves a value across a rounding boundary and the change propagates: on the MiniLM int8
#: recipe, PyTorch itself moves by up to 0.0093 (mean cosine 0.9993) when its LayerNorm weights change by 1e-6,
#: as much as ONNX Runtime differs from it (0.0086, 0.9993; docs/cli.md)
FLOAT_TOLERANCE = (1e-3, 1e-4)
DYNAMIC_INT8_TOLERANCE = (0.0, 0.03)


def _tolerance(model: Any) -> tuple[float, float]:
    if _is_encoder(model):
        from deepshrink.transformers.int8 import int8_linear_names

        if int8_linear_names(model):
            return DYNAMIC_INT8_TOLERANCE
    return FLOAT_TOLERANCE


def _verify(model: Any, path: Path, inputs: tuple[Any, ...]) -> float | None:
    """Run the ONNX file with ONNX Runtime on fresh inputs (another batch size; for an encoder another
    padding) against PyTorch within ``_tolerance(model)``; a mismatch removes the file and raises ModelError.
    None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from deepshrink.export import check_onnx

    rtol, atol = _tolerance(model)
    try:
        return check_onnx(model, path, inputs, rtol=rtol, atol=atol)
    except Exception:
        path.unlink(missing_ok=True)
        raise


def register(sub: Any) -> None:
    exp = sub.add_parser("export", help="convert an artifact to ONNX, TorchScript or safetensors")
    exp.add_argument("file", help="a .dsk artifact")
    exp.add_argument("--format", required=True, choices=sorted(SUFFIX), help="target format")
    exp.add_argument("--out", help="output file (default: FILE with the format's suffix)")
    exp.add_argument("--input-shape", type=_shape,
                     help="one sample's shape, e.g. 1,28,28 (ONNX/TorchScript tracing); for a sentence encoder the "
                          "sequence length (default 128; the ONNX file takes any batch and length)")
    exp.add_argument("--model", metavar="PACKAGE.MODULE:FACTORY",
                     help="for an artifact of your own model (deepshrink run --model package.module:factory): "
                          "the factory that builds it, as given to run (files never name code that is imported)")
    exp.add_argument("--model-args", type=model_args_type,
                     help="JSON object of arguments for the --model factory (default: those the run recorded)")
    exp.add_argument("--json", action="store_true", help="machine-readable output")
    exp.set_defaults(handler=cmd_export)
