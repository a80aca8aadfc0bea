"""Label-free quality of a compressed sentence-embedding model against its fp32 reference.

- mean cosine: average cosine similarity of each sentence's embedding to the reference embedding;
- retrieval agreement: embed ``queries`` and ``corpus`` with both models; the fraction of queries whose
  top-1 nearest corpus sentence (cosine) is the same as with the reference. Strict: when the reference's
  best and second-best cosines are close, a tiny perturbation flips the answer, so ``gap_under_0_02``
  reports how many queries are that fragile.

The default protocol (``default_split``) is 200 queries and 1,000 corpus sentences from Python's
documentation topics (deepshrink.data.text), disjoint and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deepshrink.core.errors import DataError

Embedder = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class EmbeddingAgreement:
    """Scores of a candidate against the reference embeddings."""

    mean_cosine: float
    min_cosine: float
    retrieval_agreement: float
    queries: int
    corpus: int
    gap_under_0_02: float


def default_split(n_queries: int = 200, n_corpus: int = 1000, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint (queries, corpus) sentences from Python's documentation, deterministic for a seed."""
    from deepshrink.data.text import python_doc_sentences

    sentences = python_doc_sentences(n_queries + n_corpus, seed=seed)
    return sentences[:n_queries], sentences[n_queries:]


def _normalized(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.dim() != 2 or not bool(torch.isfinite(x).all()):
        raise DataError(f"{what} embeddings must be a finite [N, D] matrix, got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x, dim=-1)


def top1(queries: torch.Tensor, corpus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each query's nearest corpus row (cosine) and the gap to the second best."""
    sims = _normalized(queries, "query") @ _normalized(corpus, "corpus").T
    best = sims.topk(min(2, sims.shape[1]), dim=1)
    gap = best.values[:, 0] - best.values[:, 1] if sims.shape[1] > 1 else torch.ones(sims.shape[0])
    return best.indices[:, 0], gap


def agreement(ref_queries: torch.Tensor, ref_corpus: torch.Tensor, queries: torch.Tensor,
              corpus: torch.Tensor) -> EmbeddingAgreement:
    """Compare precomputed embeddings (rows aligned with the reference's)."""
    if ref_queries.shape != queries.shape or ref_corpus.shape[0] != corpus.shape[0]:
        raise DataError(f"embeddings do not align with the reference: queries {tuple(queries.shape)} vs "
                        f"{tuple(ref_queries.shape)}, corpus {corpus.shape[0]} vs {ref_corpus.shape[0]} rows")
    cos = torch.cat([(_normalized(ref_queries, "reference") * _normalized(queries, "candidate")).sum(-1),
                     (_normalized(ref_corpus, "reference") * _normalized(corpus, "candidate")).sum(-1)])
    ref_top, gap = top1(ref_queries, ref_corpus)
    got_top, _ = top1(queries, corpus)
    return EmbeddingAgreement(float(cos.mean()), float(cos.min()), float((ref_top == got_top).float().mean()),
                              int(queries.shape[0]), int(corpus.shape[0]), float((gap < 0.02).float().mean()))


class EmbeddingEvaluator:
    """Embeds the queries and corpus once with the reference, then scores any candidate embedder.

    ``embed`` is any ``list[str] -> [N, D]`` function (a PyTorch model, an ONNX Runtime session...).
    """

    def __init__(self, reference: Embedder, queries: list[str] | None = None, corpus: list[str] | None = None) -> None:
        if queries is None or corpus is None:
            dq, dc = default_split()
            queries = dq if queries is None else queries
            corpus = dc if corpus is None else corpus
        for what, texts in (("queries", queries), ("corpus", corpus)):
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise DataError(f"the evaluator's {what} must be a list of sentences (strings)")
        if not queries or not corpus:
            raise DataError("the evaluator needs at least one query and one corpus sentence")
        # a sentence twice in the corpus would make its two copies "different" neighbours: keep one
        self.queries, self.corpus = list(queries), list(dict.fromkeys(corpus))
        self.ref_queries, self.ref_corpus = self._embed(reference)

    def _embed(self, embed: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(embed(self.queries)).float(), torch.as_tensor(embed(self.corpus)).float()

    def __call__(self, embed: Embedder) -> EmbeddingAgreement:
        q, c = self._embed(embed)
        return agreement(self.ref_queries, self.ref_corpus, q, c)
