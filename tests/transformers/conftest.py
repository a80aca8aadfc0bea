"""Shared fixtures: a tiny random BERT sentence encoder and the real MiniLM tokenizer (no download)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from deepshrink.transformers import build_encoder, load_tokenizer  # noqa: E402

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_encoder(seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(dict(TINY), attn_implementation=attn).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture()
def tiny() -> torch.nn.Module:
    return tiny_encoder()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return ["The quick brown fox jumps over the lazy dog.", "Lists are mutable sequences.",
            "A dictionary maps keys to values.", "Exceptions propagate up the call stack until handled.",
            "Tuples are immutable.", "The interpreter reads a script line by line."]
