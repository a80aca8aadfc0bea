"""The real all-MiniLM-L6-v2 from the installed package (loaded once per session; slow)."""

from __future__ import annotations

import pytest
import torch

from deepshrink.export import check_onnx, export_model
from deepshrink.export.onnx import default_dynamic_axes
from deepshrink.transformers import encode, load_minilm, tokenize

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="session")
def minilm():
    return load_minilm()


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_and_onnx_runtime(minilm, sentences, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    from deepshrink.transformers import minilm_path

    model, tok = minilm
    assert sum(p.numel() for p in model.parameters()) == 22_565_376  # 22,713,216 minus the unused pooler (384 * 384 + 384)
    ours = encode(model, tok, sentences)
    theirs = SentenceTransformer(str(minilm_path()), device="cpu").encode(sentences, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, theirs.float()).min() > 0.9999
    example = tokenize(tok, sentences[:2])
    path = export_model(model, tmp_path / "minilm.onnx", "onnx", example,
                        dynamic_axes=default_dynamic_axes(example, 1, sequence=True))
    assert check_onnx(model, path, tokenize(tok, sentences), rtol=1e-3, atol=1e-5) < 1e-5
