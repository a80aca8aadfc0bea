"""Unlabeled text for sentence-embedding models: what a recipe run calibrates on and evaluates with.

A :class:`TextSplits` holds three disjoint lists of real English sentences and the tokenizer that turns
them into ``(input_ids, attention_mask)``:

- ``train``: calibration / distillation text (pruning importance, least-squares refits, SmoothQuant maxima);
- ``queries`` and ``corpus``: the label-free evaluation of ``deepshrink.measure.embedding`` (mean cosine to
  the baseline's embeddings and top-1 retrieval agreement).

``load_text("pydocs")`` is the protocol of the MiniLM benchmarks: 200 queries and 1,000 corpus sentences from
Python's documentation topics, and ``training_sentences`` (the rest of them, then standard-library docstrings)
for calibration, tokenized by the shipped all-MiniLM-L6-v2 tokenizer; ``pydocs:FOLDER`` uses the tokenizer
in FOLDER instead. Needs the ``transformers`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deepshrink.core.errors import DataError

TEXT_DATASETS = ("pydocs",)
MAX_LENGTH = 128


@dataclass(frozen=True)
class TextSplits:
    """Calibration text plus an evaluation split (queries, corpus) and the tokenizer for all of them."""

    name: str
    train: list[str]
    queries: list[str]
    corpus: list[str]
    tokenizer: Any
    max_length: int = MAX_LENGTH
    description: str = ""

    def __post_init__(self) -> None:
        for part in ("train", "queries", "corpus"):
            items = getattr(self, part)
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
                raise DataError(f"text dataset {self.name!r}: {part} must be a non-empty list of sentences")
        if set(self.train) & (set(self.queries) | set(self.corpus)):
            raise DataError(f"text dataset {self.name!r}: calibration text overlaps the evaluation sentences")
        if not callable(self.tokenizer):
            raise DataError(f"text dataset {self.name!r}: the tokenizer is not callable")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise DataError(f"text dataset {self.name!r}: max_length must be an integer >= 2")

    def tokenize(self, sentences: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` int64, truncated at ``max_length`` (padded to the longest, or ``pad_to``)."""
        from deepshrink.transformers.model import tokenize

        return tokenize(self.tokenizer, sentences, self.max_length, pad_to=pad_to)

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` training sentences in batches of ``batch_size``, each padded to its longest sentence."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"calibration needs a positive number of sentences, got {n!r}")
        if n > len(self.train):
            raise DataError(f"text dataset {self.name!r} has {len(self.train)} calibration sentences, {n} asked")
        return [self.tokenize(self.train[i:min(i + batch_size, n)]) for i in range(0, n, batch_size)]

    def example(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed-shape input for MACs and latency: ``batch_size`` training sentences padded to ``max_length``."""
        reps = (batch_size + len(self.train) - 1) // len(self.train)
        return self.tokenize((self.train * reps)[:batch_size], pad_to=self.max_length)

    def embed(self, model: Any, sentences: list[str], progress: bool | None = None) -> torch.Tensor:
        """Sentence embeddings of ``model(input_ids, attention_mask)`` (batches of 64, as the benchmarks)."""
        from deepshrink.transformers.model import encode

        return encode(model, self.tokenizer, sentences, max_length=self.max_length, progress=progress)


def is_text_dataset(spec: object) -> bool:
    """Whether ``spec`` names a text dataset (``pydocs`` or ``pydocs:FOLDER``)."""
    return isinstance(spec, str) and spec.partition(":")[0] in TEXT_DATASETS


def load_text(spec: str, *, n_queries: int = 200, n_corpus: int = 1000) -> TextSplits:
    """A registered text dataset: ``pydocs`` (MiniLM tokenizer) or ``pydocs:FOLDER`` (FOLDER's tokenizer)."""
    from deepshrink.data.text import training_sentences
    from deepshrink.measure.embedding import default_split

    name, _, folder = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown text dataset {spec!r}; choose one of: {', '.join(TEXT_DATASETS)}")
    try:
        from deepshrink.transformers.model import load_tokenizer
    except ImportError as exc:
        raise DataError(f"text dataset {spec!r} needs the transformers extra "
                        f"(pip install 'deepshrink[transformers]'): {exc}") from None
    try:
        tokenizer = load_tokenizer(folder or None)
    except DataError as exc:
        raise DataError(f"text dataset {spec!r}: {exc}") from None
    queries, corpus = default_split(n_queries, n_corpus)
    return TextSplits(spec, training_sentences(queries + corpus), queries, corpus, tokenizer,
                      description="Python documentation sentences: calibration text and a 200 x 1,000 retrieval "
                                  "evaluation against the baseline's embeddings")


__all__ = ["MAX_LENGTH", "TEXT_DATASETS", "TextSplits", "is_text_dataset", "load_text"]
