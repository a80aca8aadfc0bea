"""int8 Linear layers with real integer kernels, for BERT-family encoders.

- PyTorch: ``quantize_linears(model, per_channel=...)`` swaps every ``nn.Linear`` for torch's dynamic
  int8 Linear (fbgemm/x86 kernels: int8 weights, activations quantized per call). ``skip`` names layers
  kept in fp32 (e.g. the FFN down-projections, whose GELU inputs have outliers).
- ONNX Runtime: ``ort_quantize(src, dst, per_channel=...)`` runs onnxruntime's dynamic quantization
  (MatMulInteger / DynamicQuantizeLinear kernels) on an exported ONNX file; ``skip_patterns`` keeps the
  MatMuls whose node names contain any of the patterns in fp32.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, ModelError


def quantize_linears(model: nn.Module, *, per_channel: bool = True, skip: Sequence[str] = (),
                     inplace: bool = False) -> nn.Module:
    """Dynamic int8 copy of ``model`` (every Linear not matching a ``skip`` regex) with torch's int8 kernels."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    patterns = [re.compile(p) for p in skip]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(p.search(n) for p in patterns)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear layer to quantize (after skip={list(skip)})")
    qc = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    target = model if inplace else copy.deepcopy(model)
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(target.eval(), {n: qc for n in names}, dtype=torch.qint8, inplace=True)


def onnx_matmul_nodes(path: str | os.PathLike[str]) -> list[str]:
    """Names of the MatMul / Gemm nodes of an ONNX file (what dynamic quantization converts)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]


def _ort_paths(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(src, dst)`` as paths; ConfigError when onnxruntime is missing or ``src`` is not a file."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("onnxruntime is not installed: pip install 'deepshrink[onnx]'") from None
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"ONNX file {src} does not exist")
    return src, dst


def ort_quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, per_channel: bool = True,
                 skip_patterns: Sequence[str] = (), reduce_range: bool = False,
                 extra: dict[str, Any] | None = None) -> Path:
    """onnxruntime dynamic int8 quantization of ``src`` into ``dst`` (written atomically)."""
    src, dst = _ort_paths(src, dst)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deepshrink.core.fileio import atomic_write_bytes

    exclude = [n for n in onnx_matmul_nodes(src) if any(p in n for p in skip_patterns)]
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.q.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(tmp), per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             extra_options={"DefaultTensorType": 1, **(extra or {})})  # FLOAT: fused graphs
        atomic_write_bytes(dst, tmp.read_bytes())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise ModelError(f"onnxruntime cannot quantize {src}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def ort_fuse(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, num_heads: int = 0,
             hidden_size: int = 0) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's BERT graph fusion (``onnxruntime.transformers.optimizer``: Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu) of an exported encoder, written atomically to ``dst``; returns the path and
    the count of each fused operator. Attention fuses only in a graph exported with eager attention
    (``load_encoder(..., attn_implementation="eager")``): the SDPA export's masking ops hide the pattern, and it
    needs ``num_heads`` and ``hidden_size`` (the same in every layer: not for head-pruned encoders, whose other
    fusions still apply). What optimum's ORT optimization does."""
    src, dst = _ort_paths(src, dst)
    import logging

    from onnxruntime.transformers import optimizer

    from deepshrink.core.fileio import atomic_write_bytes

    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "onnx_model")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=1)
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        atomic_write_bytes(dst, model.model.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - the optimizer raises many types
        raise ModelError(f"onnxruntime cannot fuse {src}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return dst, stats
