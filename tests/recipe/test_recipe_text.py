"""Recipes on sentence encoders with a text dataset: FFN/head pruning, embedding quantization, label-free scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from deepshrink.core.errors import ConfigError, DataError, ModelError  # noqa: E402
from deepshrink.data.sentences import TextSplits, is_text_dataset, load_text  # noqa: E402
from deepshrink.measure.embedding import EmbeddingEvaluator  # noqa: E402
from deepshrink.recipe import parse_recipe, run_recipe  # noqa: E402
from deepshrink.recipe.models import load_model  # noqa: E402
from deepshrink.recipe.runner import StageError  # noqa: E402
from deepshrink.transformers import Int8Embedding, build_encoder, load_tokenizer, structure  # noqa: E402

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}
WORDS = ("list tuple dictionary module function class method string integer float file socket thread process "
         "iterator generator exception decorator context manager import package").split()


def _sentences(n: int, offset: int) -> list[str]:
    return [f"The {WORDS[(i + offset) % len(WORDS)]} and the {WORDS[(3 * i + offset + 1) % len(WORDS)]} "
            f"are described in section {i + offset}." for i in range(n)]


@pytest.fixture(scope="module")
def text() -> TextSplits:
    return TextSplits("tiny-text", _sentences(64, 0), _sentences(12, 1000), _sentences(40, 2000), load_tokenizer(),
                      max_length=32)


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(dict(TINY)).eval()


def _recipe(body: str) -> object:
    return parse_recipe(f"name: t\nstages:\n{body}")[0]


FFN = "  - kind: prune\n    method: ffn\n    sparsity: 0.5\n    round_to: 8\n    refit: true\n    calibration: 64\n"


def test_ffn_recipe_prunes_and_scores_against_the_baseline(text: TextSplits) -> None:
    model = _tiny()
    res = run_recipe(_recipe(FFN), model=model, data=text)
    assert structure(res.model)["ffn"] == [32, 32]
    base, final = res.report["baseline"], res.report["stages"][-1]
    assert base["accuracy"] == 1.0 and base["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert final["params"] < base["params"] and final["macs"] < base["macs"]
    # the recorded scores are the evaluator's, computed here independently on the returned model
    ev = EmbeddingEvaluator(lambda s: text.embed(model, s), text.queries, text.corpus)
    got = ev(lambda s: text.embed(res.model, s))
    assert final["accuracy"] == pytest.approx(got.retrieval_agreement)
    assert final["cosine"] == pytest.approx(got.mean_cosine, abs=1e-6)
    assert final["cosine"] < 1.0
    assert any("retrieval agreement" in n for n in res.report["notes"])


def test_ffn_recipe_artifact_reloads_and_resume_reuses_the_baseline(text: TextSplits, tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe = _recipe(FFN)
    first = run_recipe(recipe, model=_tiny(), data=text, out=out)
    art = out / "00-prune.dsk"
    reloaded = load_model(art, None)
    ids, mask = text.tokenize(text.queries)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), first.model(ids, mask))
    again = run_recipe(recipe, model=_tiny(), data=text, out=out)
    assert again.resumed == ["prune"]
    assert again.report["stages"][-1]["accuracy"] == first.report["stages"][-1]["accuracy"]
    assert again.report["stages"][-1]["cosine"] == first.report["stages"][-1]["cosine"]
    md = (out / "report.md").read_text()
    assert "retrieval agreement" in md and "Embedding quality against the baseline" in md


TWO = ("  - kind: prune\n    method: ffn\n    sparsity: 0.25\n    calibration: 32\n"
       "  - kind: prune\n    method: heads\n    sparsity: 0.5\n    calibration: 32\n")


def test_interrupted_text_run_resumes_and_scores_against_the_baseline(text: TextSplits, tmp_path: Path) -> None:
    recipe = _recipe(TWO)
    whole = run_recipe(recipe, model=_tiny(), data=text)

    def stop_after_first(event: dict) -> None:
        if event.get("event") == "done" and event.get("name") == "prune-1":
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, model=_tiny(), data=text, out=out, on_event=stop_after_first)
    resumed = run_recipe(recipe, model=_tiny(), data=text, out=out)
    assert resumed.resumed == ["prune-1"]
    for key in ("accuracy", "cosine", "min_cosine", "params"):
        assert resumed.report["stages"][-1][key] == whole.report["stages"][-1][key]
    assert resumed.report["stages"][-1]["cosine"] < 1.0


def test_int8_per_token_recipe_stores_codes_and_scores_the_compiled_model(text: TextSplits, tmp_path: Path) -> None:
    from deepshrink.transformers import Int8Linear

    body = ("  - kind: quantize\n    scheme: int8_per_token\n    bits: 7\n    smooth: 0.5\n    calibration: 32\n"
            "    embedding: int8\n")
    res = run_recipe(_recipe(body), model=_tiny(), data=text, out=tmp_path / "r")
    layers = [m for m in res.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 12 and all(int(m.codes.abs().max()) <= 64 for m in layers)
    base, final = res.report["baseline"], res.report["stages"][-1]
    # float32 tables and Linears -> int8 table + 7-bit codes: well under a third of the baseline file
    assert final["artifact_bytes"] < base["artifact_bytes"] / 3
    assert 0.9 < final["cosine"] < 1.0
    reloaded = load_model(tmp_path / "r" / "00-quantize.dsk", None)
    ids, mask = text.tokenize(text.corpus)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), res.model(ids, mask))


def test_static_inputs_recipe_calibrates_the_layernorm_readers(text: TextSplits, tmp_path: Path) -> None:
    from deepshrink.transformers import Int8Linear

    body = "  - kind: quantize\n    scheme: int8_per_token\n    bits: 8\n    static_inputs: true\n    calibration: 32\n"
    res = run_recipe(_recipe(body), model=_tiny(), data=text, out=tmp_path / "r")
    static = sorted(n.rsplit(".", 1)[-1] for n, m in res.model.named_modules()
                    if isinstance(m, Int8Linear) and m.act_qparams is not None)
    assert static == ["dense", "dense", "key", "key", "query", "query", "value", "value"]  # + FFN-up per layer
    assert res.report["stages"][-1]["cosine"] > 0.99
    reloaded = load_model(tmp_path / "r" / "00-quantize.dsk", None)
    ids, mask = text.tokenize(text.corpus)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), res.model(ids, mask))
    skip_all = body + "    skip: ['re:.*(query|key|value|intermediate\\.dense)']\n"
    with pytest.raises(ConfigError, match="skip keeps every query/key/value and FFN up-projection"):
        run_recipe(_recipe(skip_all), model=_tiny(), data=text, out=tmp_path / "r2")


@pytest.mark.slow
def test_compile_scores_the_inductor_model(text: TextSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepshrink.transformers.inductor as inductor

    calls: list[tuple[int, int]] = []
    real = inductor.compile_int8

    def counting(model, example, **kw):  # type: ignore[no-untyped-def]
        calls.append(tuple(example[0].shape))
        return real(model, example, **kw)

    monkeypatch.setattr(inductor, "compile_int8", counting)
    body = "  - kind: quantize\n    scheme: int8_per_token\n    bits: 7\n    compile: true\n"
    eager = run_recipe(_recipe(body.replace("    compile: true\n", "")), model=_tiny(), data=text)
    assert calls == []
    compiled = run_recipe(_recipe(body), model=_tiny(), data=text)
    assert calls == [(32, 32)]  # batch 32 x the text's max_length (32 in this fixture)
    assert any("compiled by Inductor" in n for n in compiled.report["notes"])
    e, c = eager.report["stages"][-1], compiled.report["stages"][-1]
    assert e["artifact_bytes"] == c["artifact_bytes"]
    assert abs(e["cosine"] - c["cosine"]) < 1e-3


def test_quick_caps_text_calibration(text: TextSplits) -> None:
    from deepshrink.recipe.runner import quick_recipe

    r = quick_recipe(_recipe("  - kind: prune\n    method: ffn\n    calibration: 500\n"
                             "  - kind: quantize\n    scheme: int8_per_token\n    smooth: 0.5\n"))
    assert [s.calibration for s in r.stages] == [64, 64]


def test_heads_and_embedding_stages(text: TextSplits) -> None:
    body = ("  - kind: prune\n    method: heads\n    sparsity: 0.5\n    scope: global\n    calibration: 32\n"
            "  - kind: quantize\n    scheme: none\n    embedding: int8\n")
    res = run_recipe(_recipe(body), model=_tiny(), data=text)
    assert sum(structure(res.model)["heads"]) == 4
    assert isinstance(res.model.bert.embeddings.word_embeddings, Int8Embedding)
    sizes = [s["artifact_bytes"] for s in res.report["stages"]]
    # the int8 table (30522 x 32) saves ~3 bytes per entry over float32
    assert sizes[0] - sizes[1] > 2.5 * 30522 * 32


@pytest.mark.parametrize("body, match", [
    ("  - kind: finetune\n    epochs: 1\n", "not supported on a text dataset"),
    ("  - kind: prune\n    sparsity: 0.5\n", "not supported on a text dataset"),
    ("  - kind: quantize\n    scheme: int8_dynamic\n", "not supported on a text dataset"),
    ("  - kind: distill\n    student: lenet300\n", "not supported on a text dataset"),
])
def test_text_runs_refuse_stages_that_need_labels(text: TextSplits, body: str, match: str) -> None:
    with pytest.raises(StageError, match=f"stage 0 .*{match}"):
        run_recipe(_recipe(body), model=_tiny(), data=text)


def test_text_stages_need_text_data_and_a_bert_model(text: TextSplits, tmp_path: Path) -> None:
    from deepshrink.models import create

    emb = "  - kind: finetune\n    epochs: 1\n  - kind: quantize\n    scheme: none\n    embedding: int8\n"
    for body, where in ((FFN, "stage 0"), (emb, "stage 1")):
        with pytest.raises(StageError, match=f"{where} .*needs a text dataset"):
            run_recipe(_recipe(body), model="lenet300", data="digits", out=tmp_path / "o")
        assert not (tmp_path / "o").exists()
    with pytest.raises(ModelError, match="not a BERT-family model"):
        run_recipe(_recipe(FFN), model=create("lenet300"), data=text)
    with pytest.raises(ModelError, match="sentence encoder: use a text dataset"):
        run_recipe(_recipe("  - kind: quantize\n    scheme: int8_dynamic\n"), model=_tiny(), data="digits")


def test_calibration_beyond_the_text_fails_before_any_work(text: TextSplits, tmp_path: Path) -> None:
    body = FFN.replace("calibration: 64", "calibration: 100000")
    with pytest.raises(StageError, match="stage 0 .*100000 sentences asked"):
        run_recipe(_recipe(body), model=_tiny(), data=text, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("body, match", [
    ("  - kind: prune\n    method: ffn\n    importance: taylor\n", "importance: not used by method ffn"),
    ("  - kind: prune\n    method: heads\n    retrain: {epochs: 1}\n", "retrain: not used by method heads"),
    ("  - kind: prune\n    sparsity: 0.5\n    refit: true\n", "refit: only methods heads and ffn"),
    ("  - kind: quantize\n    scheme: int8_static\n    smooth: 0.5\n", "smooth: SmoothQuant applies"),
    ("  - kind: quantize\n    scheme: none\n", "scheme: none quantizes only the embedding"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    bits: 4\n", "7- or 8-bit"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    observer: mse\n", "observer: not used"),
    ("  - kind: quantize\n    scheme: none\n    embedding: int8\n    embedding_bits: 6\n", "embedding_bits"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    smooth: 1.5\n", "smooth"),
    ("  - kind: quantize\n    scheme: int8_dynamic\n    embedding: codebook\n", "embedding: the word-embedding"),
    ("  - kind: prune\n    method: heads\n    round_to: 4\n", "round_to: not used by method heads"),
    ("  - kind: prune\n    method: ffn\n    ridge: 0.01\n", "ridge: only used with refit"),
    ("  - kind: quantize\n    scheme: none\n    embedding: int8\n    bits: 4\n", "bits: not used by scheme none"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    calibration: 64\n", "calibrates only for smooth"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    skip: ['type:Linear']\n", "by name"),
    ("  - kind: quantize\n    scheme: int8_static\n    compile: true\n", "compile: only scheme int8_per_token"),
    ("  - kind: quantize\n    scheme: int8_dynamic\n    static_inputs: true\n", "static_inputs: only scheme"),
    ("  - kind: quantize\n    scheme: int8_per_token\n    static_inputs: 2\n", "static_inputs"),
])
def test_bad_text_stage_settings_name_the_key(body: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _recipe(body)


def test_text_dataset_names_and_checks(text: TextSplits) -> None:
    assert is_text_dataset("pydocs") and is_text_dataset("pydocs:/x") and not is_text_dataset("mnist5k")
    with pytest.raises(DataError, match="unknown text dataset"):
        load_text("wiki")
    with pytest.raises(DataError, match="overlaps the evaluation"):
        TextSplits("t", text.queries[:2], text.queries, text.corpus, text.tokenizer)
    with pytest.raises(DataError, match="512 asked"):
        text.calibration_batches(512)
    ids, mask = text.example()
    assert ids.shape == mask.shape == (1, 32)
    assert [b[0].shape[0] for b in text.calibration_batches(40, batch_size=16)] == [16, 16, 8]


def test_pydocs_is_the_benchmarks_protocol() -> None:
    from deepshrink.data.text import training_sentences
    from deepshrink.measure.embedding import default_split

    t = load_text("pydocs")
    q, c = default_split()
    assert (t.queries, t.corpus) == (q, c) and t.train == training_sentences(q + c) and t.max_length == 128


@pytest.mark.slow
def test_cli_runs_a_text_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    args = json.dumps(TINY)
    recipe.write_text("name: tiny-ffn\nmodel: deepshrink.transformers.model:build_encoder\n"
                      f"model_args: {args}\ndataset: pydocs\nstages:\n" + FFN)
    env = {**os.environ, "DEEPSHRINK_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "deepshrink", "run", str(recipe), "--out", str(tmp_path / "o"),
                           "--json", "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-800:]
    rep = json.loads(proc.stdout)
    assert rep["dataset"] == "pydocs" and rep["baseline"]["accuracy"] == 1.0
    assert 0.0 <= rep["stages"][-1]["accuracy"] <= 1.0 and rep["stages"][-1]["cosine"] < 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text() + "  - kind: finetune\n    epochs: 1\n")
    proc = subprocess.run([sys.executable, "-m", "deepshrink", "run", str(bad), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "not supported on a text dataset" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_compress_api_takes_text_data(text: TextSplits) -> None:
    import deepshrink

    res = deepshrink.compress(_tiny(), {"stages": [{"kind": "prune", "method": "ffn", "sparsity": 0.25,
                                                     "calibration": 32}]}, train_data=text)
    assert structure(res.model)["ffn"] == [48, 48]
    assert res.report["dataset"] == "tiny-text" and 0.0 <= res.report["stages"][-1]["accuracy"] <= 1.0


def test_model_that_cannot_take_the_data_fails_in_one_line_before_any_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"'lenet300' cannot run on 'mnist1d' inputs of shape \(1, 40\)"):
        run_recipe(_recipe("  - kind: finetune\n    epochs: 1\n"), model="lenet300", data="mnist1d",
                   out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    from deepshrink.auto.inputs import prepare

    with pytest.raises(ModelError, match="is a sentence encoder"):
        prepare("deepshrink.transformers.model:build_encoder", weights=None, data="digits", out=tmp_path / "a",
                model_args=dict(TINY))


def test_pruning_after_int8_is_refused_before_any_work(text: TextSplits, tmp_path: Path) -> None:
    recipe = _recipe("  - kind: quantize\n    scheme: int8_per_token\n" + FFN)
    with pytest.raises(StageError, match="stage 1 \\(prune\\).*before the quantize stage"):
        run_recipe(recipe, model=_tiny(), data=text, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("body, match", [
    ("  - kind: quantize\n    scheme: int8_per_token\n    skip: ['encoder.layer.*.ouput.dense']\n",
     "stage 0 .*skip: pattern 'encoder.layer.\\*.ouput.dense' matches no Linear layer"),
    ("  - kind: quantize\n    scheme: int8_per_token\n  - kind: quantize\n    scheme: int8_per_token\n",
     "stage 1 .*stage 0 already made the Linear layers int8"),
    ("  - kind: quantize\n    scheme: none\n    embedding: int8\n  - kind: quantize\n    scheme: none\n"
     "    embedding: int8\n", "stage 1 .*stage 0 already compressed the embedding table"),
])
def test_text_stage_mistakes_fail_before_any_work(text: TextSplits, tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(StageError, match=match):
        run_recipe(_recipe(body), model=_tiny(), data=text, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
