"""Recipe stages on BERT-family sentence encoders with a text dataset (``deepshrink.data.sentences``).

Text data has no labels, so every stage here works from calibration sentences, never from training:
``prune`` with ``method: heads | ffn`` (structured, optional least-squares refit), and ``quantize`` with
``scheme: int8_per_token`` (int8 Linear layers with per-token activations, optional SmoothQuant, stored as
7/8-bit codes, bit-packed or entropy-coded) and/or ``embedding: int8 | codebook`` (the word-embedding table). Stages that train
(finetune, distill, QAT, retraining) are refused before any work by :func:`check_text_stage`.
"""

from __future__ import annotations

import re

from typing import TYPE_CHECKING, Any

from deepshrink.core.errors import ConfigError
from deepshrink.recipe import schema as S

if TYPE_CHECKING:
    from deepshrink.recipe.stages import RunState

#: what a text run can do; everything else needs labels
TEXT_STAGES = "prune (method heads or ffn), quantize (scheme int8_per_token, or none with embedding), encode, export"


def check_text_stage(stage: Any) -> None:
    """ConfigError unless ``stage`` can run on a sentence encoder with unlabeled text."""
    ok = (isinstance(stage, S.PruneStage) and stage.method in S.TRANSFORMER_PRUNING) or isinstance(
        stage, (S.EncodeStage, S.ExportStage)) or (
        isinstance(stage, S.QuantizeStage) and stage.scheme in ("int8_per_token", "none"))
    if not ok:
        raise ConfigError(f"not supported on a text dataset (no labels to train on; the image engines do not "
                          f"take (input_ids, attention_mask)); text runs support {TEXT_STAGES}")


def calibration_needed(stage: Any) -> int:
    """How many calibration sentences ``stage`` reads (0: none)."""
    if isinstance(stage, S.PruneStage) and stage.method in S.TRANSFORMER_PRUNING:
        return stage.calibration
    if isinstance(stage, S.QuantizeStage) and stage.scheme == "int8_per_token" and (
            stage.smooth is not None or stage.static_inputs):
        return stage.calibration
    return 0


class EmbeddingScorer:
    """Each stage's label-free quality against the baseline's embeddings (``deepshrink.measure.embedding``):
    ``accuracy`` is the top-1 retrieval agreement (queries vs corpus), ``cosine`` the mean cosine similarity.

    The reference is set from the baseline model, or on resume by ``reference_loader`` when first needed.
    With ``compiled``, a model holding ``Int8Linear`` layers is scored as deployed: compiled by Inductor
    (``compile_int8``, batch 32 x the text's length), so fresh and resumed runs score the same thing."""

    def __init__(self, text: Any, *, compiled: bool = False, progress: bool | None = None) -> None:
        self.text = text
        self.compiled = compiled
        self.progress = progress
        self.evaluator: Any = None
        self.reference_loader: Any = None

    @property
    def note(self) -> str:
        """The sentence the report shows to say what ``accuracy`` means on this run."""
        how = ("; int8 stages scored as deployed, compiled by Inductor onto oneDNN int8 kernels"
               if self.compiled else "")
        return (f"accuracy = top-1 retrieval agreement with the baseline's embeddings ({len(self.text.queries)} "
                f"queries x {len(self.text.corpus)} corpus sentences of {self.text.name}); cosine = mean cosine "
                f"similarity of each sentence's embedding to the baseline's{how}")

    def _embed(self, model: Any) -> Any:
        return lambda sentences: self.text.embed(model, sentences, self.progress)

    def set_reference(self, model: Any) -> dict[str, float]:
        """Embed the evaluation text with the baseline ``model``; returns the baseline's own (perfect) scores."""
        from deepshrink.measure.embedding import EmbeddingEvaluator, agreement

        with _eval(model):
            self.evaluator = EmbeddingEvaluator(self._embed(model), self.text.queries, self.text.corpus)
        ev = self.evaluator
        return _scores(agreement(ev.ref_queries, ev.ref_corpus, ev.ref_queries, ev.ref_corpus))

    def __call__(self, model: Any) -> dict[str, float]:
        """Scores of ``model`` against the reference (loaded first on a resumed run)."""
        if self.evaluator is None:
            if self.reference_loader is None:
                raise ConfigError("internal: the embedding scorer has no baseline reference")
            self.set_reference(self.reference_loader())
        scored = self._deployed(model)
        with _eval(model):
            return _scores(self.evaluator(self._embed(scored)))

    def _deployed(self, model: Any) -> Any:
        from deepshrink.transformers.int8 import int8_linear_names

        if not self.compiled or not int8_linear_names(model):
            return model
        import torch

        from deepshrink.transformers.inductor import compile_int8

        example = self.text.example(32)
        # one compiled length: shorter ones give the same embeddings (bit for bit where checked) and would only
        # add compile time
        return compile_int8(model.eval(), example, threads=torch.get_num_threads(),
                            lengths=[example[0].shape[1]])


def _scores(s: Any) -> dict[str, float]:
    return {"accuracy": s.retrieval_agreement, "cosine": s.mean_cosine, "min_cosine": s.min_cosine}


class _eval:
    """Eval mode for the block, the previous mode restored after."""

    def __init__(self, model: Any) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def _text(state: RunState) -> Any:
    """The run's text dataset; a ConfigError when the run has none."""
    if state.text is None:
        raise ConfigError("this stage needs a text dataset (e.g. --data pydocs) and a sentence encoder")
    return state.text


def prune(stage: S.PruneStage, state: RunState, name: str) -> None:
    """Remove ``stage.sparsity`` of the attention heads or FFN neurons (``deepshrink.transformers.prune``)."""
    from deepshrink.transformers import prune_ffn, prune_heads

    batches = _text(state).calibration_batches(stage.calibration)
    if stage.method == "heads":
        prune_heads(state.model, stage.sparsity, batches, scope=stage.scope, refit=stage.refit, ridge=stage.ridge)
    else:
        prune_ffn(state.model, stage.sparsity, batches, scope=stage.scope, round_to=stage.round_to,
                  refit=stage.refit, ridge=stage.ridge)
    state.model.eval()


def quantize(stage: S.QuantizeStage, state: RunState, name: str) -> None:
    """The embedding table first (so SmoothQuant sees the activations of the deployed model), then the
    Linear layers as int8 codes with per-token activation quantization."""
    from deepshrink.transformers import compress_embedding

    text = _text(state)
    if stage.embedding is not None:
        compress_embedding(state.model, stage.embedding, bits=stage.embedding_bits)
    if stage.scheme == "int8_per_token":
        from deepshrink.transformers.int8 import LN_INPUTS, quantize_int8

        skip = [f"^(?:{S.pattern_regex(p)})$" for p in stage.skip]
        if stage.static_inputs:
            from deepshrink.transformers.int8 import linear_names

            quantized, _ = linear_names(state.model, skip)
            if not any(re.search(LN_INPUTS, n) for n in quantized):
                raise ConfigError("static_inputs: true, but skip keeps every query/key/value and FFN up-projection "
                                  "Linear in fp32: nothing to make static")
        calibrates = stage.smooth is not None or stage.static_inputs
        calibration = text.calibration_batches(stage.calibration) if calibrates else ()
        state.model = quantize_int8(state.model, calibration=calibration, smooth=stage.smooth,
                                    weight_bits=stage.bits, skip=skip,
                                    static_inputs=[LN_INPUTS] if stage.static_inputs else [])
    state.model.eval()


__all__ = ["TEXT_STAGES", "EmbeddingScorer", "calibration_needed", "check_text_stage", "prune", "quantize"]
