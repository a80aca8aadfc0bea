"""The label-free embedding evaluator and the shipped English text."""

from __future__ import annotations

import pytest
import torch

from deepshrink.core.errors import ConfigError, DataError
from deepshrink.data.text import python_doc_sentences, stdlib_docstring_sentences, training_sentences
from deepshrink.measure.embedding import EmbeddingEvaluator, agreement, default_split, top1


def test_text_is_real_deterministic_and_splits_disjointly() -> None:
    a, b = python_doc_sentences(50, seed=1), python_doc_sentences(50, seed=1)
    assert a == b and len(set(a)) == 50 and a != python_doc_sentences(50, seed=2)
    assert all(s[0].isupper() and 40 <= len(s) <= 300 for s in a)
    queries, corpus = default_split(200, 1000)
    assert len(queries) == 200 and len(corpus) == 1000 and not set(queries) & set(corpus)
    extra = stdlib_docstring_sentences(100, exclude=set(corpus))
    assert len(extra) == 100 and not set(extra) & set(corpus)
    train = training_sentences(queries + corpus)
    assert len(train) > 1000 and not set(train) & (set(queries) | set(corpus)) and len(set(train)) == len(train)
    with pytest.raises(ConfigError, match="not one string"):
        training_sentences(queries[0])
    with pytest.raises(DataError, match="usable sentences"):
        python_doc_sentences(10**6)
    with pytest.raises(ConfigError):
        python_doc_sentences(0)


def test_agreement_counts_top1_matches_and_cosines() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.7, 0.72]])
    idx, gap = top1(q, c)
    assert idx.tolist() == [0, 1, 2] and gap.shape == (3,)
    same = agreement(q, c, q * 3, c)  # scaling changes nothing
    assert same.retrieval_agreement == 1.0 and same.mean_cosine == pytest.approx(1.0)
    swapped = agreement(q, c, q[:, [1, 0]], c)  # queries 0 and 1 now retrieve each other's neighbour
    assert swapped.retrieval_agreement == pytest.approx(1 / 3)
    assert swapped.mean_cosine < 0.9
    with pytest.raises(DataError, match="do not align"):
        agreement(q, c, q[:2], c)


def test_evaluator_scores_a_tiny_encoder_against_itself_and_a_perturbed_copy(tiny, tokenizer) -> None:
    from deepshrink.transformers import encode

    queries, corpus = default_split(10, 40)
    ev = EmbeddingEvaluator(lambda s: encode(tiny, tokenizer, s, max_length=64), queries, corpus)
    assert ev(lambda s: encode(tiny, tokenizer, s, max_length=64)).retrieval_agreement == 1.0
    gen = torch.Generator().manual_seed(0)
    noisy = ev(lambda s: encode(tiny, tokenizer, s, max_length=64) + 0.5 * torch.randn(len(s), 32, generator=gen))
    assert noisy.mean_cosine < 0.99 and noisy.queries == 10 and noisy.corpus == 40
