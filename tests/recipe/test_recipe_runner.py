"""The recipe runner on a tiny MLP and the 8x8 digits: every stage kind, resume, user models, the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.data import load as load_data
from deepshrink.measure import evaluate
from deepshrink.models import create
from deepshrink.recipe import parse_recipe
from deepshrink.recipe.runner import StageError, run_recipe

HEAD = """name: tiny
model: mlp
model_args: {in_features: 64, hidden: [32, 16]}
dataset: digits
stages:
  - kind: finetune
    epochs: 3
    optimizer: adam
    lr: 0.01
"""


def _recipe(body: str):
    return parse_recipe(HEAD + body, "tiny.yaml")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.mark.slow
def test_prune_cluster_encode_export_and_resume(tmp_path: Path, digits) -> None:
    recipe, lines = _recipe("""  - kind: prune
    method: magnitude
    sparsity: 0.8
    overrides: {"*fc3": 0.5}
    schedule: iterative
    steps: 2
    retrain: {epochs: 1, optimizer: adam, lr: 0.003}
  - kind: cluster
    bits: 3
    finetune: {epochs: 1, optimizer: adam, lr: 0.001}
  - kind: encode
    small_dtype: float16
  - kind: export
    format: safetensors
""")
    out = tmp_path / "run"
    res = run_recipe(recipe, data=digits, out=out, lines=lines, source="tiny.yaml")
    w = _weights(res.model)
    assert abs(float((w["layers.fc1"] == 0).float().mean()) - 0.8) < 0.01
    assert abs(float((w["layers.fc3"] == 0).float().mean()) - 0.5) < 0.02
    for t in w.values():
        assert torch.unique(t[t != 0]).numel() <= 2**3  # shared codebook of 8 values, zeros stay zero
    rep = res.report
    assert [s["name"] for s in rep["stages"]] == ["prune", "cluster", "encode", "export"]
    assert rep["stages"][2]["artifact_bytes"] < rep["stages"][0]["artifact_bytes"] < rep["baseline"]["artifact_bytes"]
    assert rep["compression_ratio"] == pytest.approx(4 * rep["baseline"]["params"] / rep["stages"][2]["artifact_bytes"])
    for name in ("report.json", "report.md", "report.html", "state.json", "03-encode.dsk", "model.safetensors"):
        assert (out / name).is_file(), name
    x = digits.test.tensors[0][:16]
    loaded = deepshrink.load(out / "03-encode.dsk")
    assert torch.equal(loaded(x), res.model.eval()(x))

    # interrupt after the prune stage: the rerun skips finetune + prune and reproduces the same numbers
    state = json.loads((out / "state.json").read_text())
    for name in ("cluster", "encode", "export"):
        del state["stages"][name]
    state["complete"] = False
    (out / "state.json").write_text(json.dumps(state))
    events: list[dict] = []
    again = run_recipe(recipe, data=digits, out=out, on_event=events.append)
    assert again.resumed == ["finetune", "prune"]
    assert [e["name"] for e in events if e["event"] == "skip"] == ["finetune", "prune"]
    for a, b in zip(rep["stages"], again.report["stages"]):
        assert (a["accuracy"], a["artifact_bytes"], a["nonzeros"]) == (b["accuracy"], b["artifact_bytes"], b["nonzeros"])

    other, _ = _recipe("  - kind: encode\n")
    with pytest.raises(deepshrink.core.errors.ConfigError, match="another recipe"):
        run_recipe(other, data=digits, out=out)


@pytest.mark.slow
def test_quantize_schemes_store_low_bit_codes(digits) -> None:
    for body, bits in (("  - kind: quantize\n    scheme: int8_static\n    calibration: 64\n", 8),
                       ("  - kind: quantize\n    scheme: qat\n    bits: 4\n    train: {epochs: 1, optimizer: adam, lr: 0.001}\n", 4)):
        recipe, _ = _recipe(body)
        rep = run_recipe(recipe, data=digits).report
        stage = rep["stages"][0]
        assert [layer["bits"] for layer in stage["layers"]] == [bits] * 3
        assert stage["artifact_bytes"] < rep["baseline"]["artifact_bytes"] * (bits + 4) / 32
        assert stage["accuracy"] > 0.5
        assert stage["artifact"] is None  # no output folder: temporary artifacts, sizes kept


@pytest.mark.slow
def test_factorize_structured_and_distill_change_the_architecture(digits) -> None:
    recipe, _ = _recipe("""  - kind: factorize
    layers: [layers.fc1]
    rank: 4
  - kind: prune
    method: structured
    sparsity: 0.5
  - kind: distill
    student: mlp
    student_args: {in_features: 64, hidden: [8]}
    temperature: 2.0
    train: {epochs: 1, optimizer: adam, lr: 0.01}
""")
    rep = run_recipe(recipe, data=digits).report
    base = rep["baseline"]["params"]
    assert rep["stages"][0]["params"] == base - (64 * 32) + 4 * (64 + 32)
    assert rep["stages"][1]["params"] < rep["stages"][0]["params"]
    assert rep["stages"][2]["params"] == 64 * 8 + 8 + 8 * 10 + 10


def test_unknown_layer_pattern_fails_before_any_file(tmp_path: Path, digits) -> None:
    recipe, lines = _recipe("  - kind: prune\n    layers: [conv9]\n")
    out = tmp_path / "never"
    with pytest.raises(StageError) as info:
        run_recipe(recipe, data=digits, out=out, lines=lines, source="tiny.yaml")
    assert str(info.value).startswith("tiny.yaml:10: stage 1 (prune): layer pattern 'conv9' matches no")
    assert not out.exists()


def test_user_model_from_import_path_with_weights(tmp_path: Path, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    (tmp_path / "usernet.py").write_text(
        "from torch import nn\n\ndef build(width=12):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    recipe, _ = _recipe("  - kind: prune\n    sparsity: 0.5\n")
    events: list[dict] = []
    res = run_recipe(recipe, model="usernet:build", model_args={}, data=digits, weights=tmp_path / "w.safetensors",
                     out=tmp_path / "out", on_event=events.append)
    assert [e["name"] for e in events if e["event"] == "skip"] == ["finetune"]  # trained weights given
    assert res.report["baseline"]["accuracy"] == evaluate(net, digits.test).accuracy
    assert res.report["model"] == "usernet:build"
    with pytest.raises(deepshrink.core.errors.ArtifactError, match="usernet:build"):
        deepshrink.load(tmp_path / "out" / "01-prune.dsk")  # never imports code named in a file
    import usernet

    back = deepshrink.load(tmp_path / "out" / "01-prune.dsk", model=usernet.build())
    x = digits.test.tensors[0][:8]
    assert torch.equal(back(x), res.model.eval()(x))


def test_compress_takes_any_module_and_its_artifact_loads_into_a_fresh_one(tmp_path: Path, digits) -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    torch.manual_seed(0)
    model = build()
    deepshrink.train.Trainer(model, deepshrink.train.TrainConfig(epochs=2, optimizer="adam", lr=0.01),
                             progress=False).fit(digits.train)
    recipe = {"name": "any", "stages": [{"kind": "prune", "sparsity": 0.5}, {"kind": "encode"}]}
    res = deepshrink.compress(model, recipe, train_data=digits.train, eval_data=digits.test)
    res.save(tmp_path / "m.dsk")
    with pytest.raises(deepshrink.core.errors.ArtifactError, match="Sequential.*model="):
        deepshrink.load(tmp_path / "m.dsk")
    x = digits.test.tensors[0][:8]
    assert torch.equal(deepshrink.load(tmp_path / "m.dsk", model=build())(x), res.model.eval()(x))


@pytest.mark.slow
def test_compress_api_with_datasets_and_eval_fn(tmp_path: Path, digits) -> None:
    torch.manual_seed(0)
    model = create("mlp", in_features=64, hidden=[32])
    deepshrink.train.Trainer(model, deepshrink.train.TrainConfig(epochs=2, optimizer="adam", lr=0.01)).fit(digits.train)
    calls = []

    def score(m: nn.Module) -> float:
        calls.append(1)
        return evaluate(m, digits.test).accuracy

    recipe = {"name": "api", "stages": [{"kind": "finetune", "epochs": 5}, {"kind": "prune", "sparsity": 0.7},
                                        {"kind": "encode", "coding": "huffman"}]}
    res = deepshrink.compress(model, recipe, train_data=digits.train, eval_data=digits.test, eval_fn=score)
    assert len(calls) == 3  # baseline + 2 stages; the leading finetune is skipped for a given module
    assert res.report["stages"][-1]["accuracy"] == evaluate(res.model, digits.test).accuracy
    nbytes = res.save(tmp_path / "m.dsk")
    assert nbytes == (tmp_path / "m.dsk").stat().st_size
    x = digits.test.tensors[0][:8]
    assert torch.equal(deepshrink.load(tmp_path / "m.dsk")(x), res.model(x))
    with pytest.raises(deepshrink.core.errors.ConfigError, match="stage 1 \\(prune\\): sparsity"):
        deepshrink.compress(model, {"stages": [{"kind": "finetune"}, {"kind": "prune", "sparsity": 2}]},
                            train_data=digits)


@pytest.mark.slow
def test_compact_substitution_and_hashing_from_a_recipe_reload_exactly(tmp_path: Path, digits) -> None:
    recipe, _ = parse_recipe("""name: compact
model: cnn
model_args: {widths: [8, 16], hidden: 32, image_size: 8}
dataset: digits
stages:
  - kind: finetune
    epochs: 2
    optimizer: adam
    lr: 0.01
  - kind: factorize
    method: depthwise_separable
    layers: [conv2]
  - kind: factorize
    method: hashed
    layers: [fc1]
    compression: 4
    finetune: {epochs: 1, optimizer: adam, lr: 0.003}
""", "compact.yaml")
    result = run_recipe(recipe, data=digits, out=tmp_path / "run")
    rep = result.report
    conv2 = 8 * 16 * 25 + 16
    dwsep = 8 * 25 + 8 * 16 + 16  # depthwise (multiplier 1, no bias) + pointwise with the bias
    assert rep["stages"][0]["params"] == rep["baseline"]["params"] - conv2 + dwsep
    fc1 = 16 * 2 * 2 * 32
    assert rep["stages"][1]["params"] == rep["stages"][0]["params"] - fc1 + fc1 // 4
    assert rep["stages"][1]["accuracy"] > 0.5
    reloaded = deepshrink.load(rep["stages"][1]["artifact"])
    x = digits.test.tensors[0][:16]
    model = result.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), model(x))


def test_float16_small_tensors_round_batch_norm_statistics_in_memory_too(tmp_path: Path, digits) -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

    torch.manual_seed(0)
    model = build().train()
    with torch.no_grad():
        model(digits.train.tensors[0][:128])  # running statistics that float16 cannot hold exactly
    res = deepshrink.compress(model.eval(), {"stages": [{"kind": "encode", "small_dtype": "float16"}]},
                              train_data=digits.train, eval_data=digits.test, out=tmp_path / "run")
    back = deepshrink.load(tmp_path / "run" / "00-encode.dsk", model=build())
    x = digits.test.tensors[0][:32]
    assert torch.equal(back(x), res.model.eval()(x))  # the measured model is the stored one


def _interrupt_after(out: Path, stage: str) -> None:
    """Make ``out`` look like a run stopped right after ``stage`` completed (its later stages not done)."""
    state = json.loads((out / "state.json").read_text())
    last = state["stages"][stage]["index"]
    for name in [n for n, entry in state["stages"].items() if entry["index"] > last]:
        del state["stages"][name]
    state["complete"] = False
    (out / "state.json").write_text(json.dumps(state))


# a training stage after the one the run stops at, then encode
TUNE_ENCODE = """  - kind: finetune
    name: tune
    epochs: 1
    optimizer: adam
    lr: 0.0003
  - kind: encode
"""


def _same_stages(a: dict, b: dict) -> None:
    for x, y in zip(a["stages"], b["stages"], strict=True):
        assert (x["name"], x["accuracy"], x["artifact_bytes"]) == (y["name"], y["accuracy"], y["artifact_bytes"])


def test_a_run_stopped_after_quantizing_resumes_through_the_quantizers(tmp_path: Path, digits) -> None:
    recipe, _ = _recipe("""  - kind: quantize
    scheme: int
    bits: 4
""" + TUNE_ENCODE)
    out = tmp_path / "run"
    full = run_recipe(recipe, data=digits, out=out)
    _interrupt_after(out, "quantize")
    again = run_recipe(recipe, data=digits, out=out)
    assert again.resumed == ["finetune-1"]  # the quantize stage runs again: its quantizers are not in the artifact
    _same_stages(full.report, again.report)


def test_a_run_stopped_after_clustering_resumes_with_every_centroid(tmp_path: Path, digits) -> None:
    recipe, _ = _recipe("""  - kind: prune
    sparsity: 0.9
  - kind: cluster
    bits: 4
""" + TUNE_ENCODE)

    def codebooks(model: nn.Module) -> list[tuple[int, int]]:
        """(centroids, centroids in use) per shared layer."""
        return [(m.parametrizations.weight.original.numel(), int(m.parametrizations.weight[0].assign.unique().numel()))
                for m in model.modules() if hasattr(m, "parametrizations")]

    out = tmp_path / "run"
    full = run_recipe(recipe, data=digits, out=out)
    assert any(used <= k for k, used in codebooks(full.model))  # a centroid with no weight (id k is "zero")
    _interrupt_after(out, "cluster")
    again = run_recipe(recipe, data=digits, out=out)
    assert again.resumed == ["finetune-1", "prune", "cluster"]
    assert codebooks(again.model) == codebooks(full.model)
    _same_stages(full.report, again.report)


def test_simulated_activation_quantization_is_told_apart_from_the_artifact(tmp_path: Path, digits) -> None:
    recipe, _ = _recipe("  - kind: quantize\n    scheme: static\n    bits: 4\n    act_bits: 4\n    calibration: 64\n")
    res = run_recipe(recipe, data=digits, out=tmp_path / "o")
    stage = res.report["stages"][0]
    loaded = deepshrink.load(stage["artifact"])
    assert stage["artifact_accuracy"] == evaluate(loaded, digits.test).accuracy
    assert any("simulated activation quantization" in n and "artifact stores weights only" in n
               for n in res.report["notes"])
