"""Recipe stages on BERT-family sentence encoders with a text dataset (``deepshrink.data.sentences``).

Text data has no labels, so every stage here works from calibration sentences, never from training:
``prune`` with ``method: heads | ffn`` (structured, optional least-squares refit), and ``quantize`` with
``scheme: int8_per_token`` (int8 Linear layers with per-token activations, optional SmoothQuant, stored as
packed 7/8-bit codes) and/or ``embedding: int8 | codebook`` (the word-embedding table). Stages that train
(finetune, distill, QAT, retraining) are refused before any work by :func:`check_text_stage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepshrink.core.errors import ConfigError
from deepshrink.recipe import schema as S

if TYPE_CHECKING:
    from deepshrink.recipe.stages import RunState

#: what a text run can do; everything else needs labels
TEXT_STAGES = "prune (method heads or ffn), quantize (scheme int8_per_token, or none with embedding), encode, export"


def check_text_stage(stage: Any) -> None:
    """ConfigError unless ``stage`` can run without labels on a sentence encoder."""
    ok = (isinstance(stage, S.PruneStage) and stage.method in S.TRANSFORMER_PRUNING) or isinstance(
        stage, (S.EncodeStage, S.ExportStage)) or (
        isinstance(stage, S.QuantizeStage) and stage.scheme in ("int8_per_token", "none"))
    if not ok:
        raise ConfigError(f"a text dataset has no labels to train or calibrate this stage on; text runs support "
                          f"{TEXT_STAGES}")


class EmbeddingScorer:
    """Each stage's label-free quality against the baseline's embeddings (``deepshrink.measure.embedding``):
    ``accuracy`` is the top-1 retrieval agreement (queries vs corpus), ``cosine`` the mean cosine similarity."""

    def __init__(self, text: Any) -> None:
        self.text = text
        self.evaluator: Any = None

    @property
    def note(self) -> str:
        return (f"accuracy = top-1 retrieval agreement with the baseline's embeddings ({len(self.text.queries)} "
                f"queries x {len(self.text.corpus)} corpus sentences of {self.text.name}); cosine = mean cosine "
                "similarity of each sentence's embedding to the baseline's")

    def set_reference(self, model: Any) -> None:
        from deepshrink.measure.embedding import EmbeddingEvaluator

        was = model.training
        model.eval()
        try:
            self.evaluator = EmbeddingEvaluator(lambda s: self.text.embed(model, s), self.text.queries,
                                                self.text.corpus)
        finally:
            model.train(was)

    def __call__(self, model: Any) -> dict[str, float]:
        if self.evaluator is None:
            raise ConfigError("internal: the embedding scorer has no baseline reference")
        was = model.training
        model.eval()
        try:
            s = self.evaluator(lambda x: self.text.embed(model, x))
        finally:
            model.train(was)
        return {"accuracy": s.retrieval_agreement, "cosine": s.mean_cosine, "min_cosine": s.min_cosine}


def _text(state: RunState) -> Any:
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
        from deepshrink.transformers.int8 import quantize_int8

        skip = [f"^(?:{S.pattern_regex(p)})$" for p in stage.skip]
        calibration = text.calibration_batches(stage.calibration) if stage.smooth is not None else ()
        state.model = quantize_int8(state.model, calibration=calibration, smooth=stage.smooth,
                                    weight_bits=stage.bits, skip=skip)
    state.model.eval()


__all__ = ["TEXT_STAGES", "EmbeddingScorer", "check_text_stage", "prune", "quantize"]
