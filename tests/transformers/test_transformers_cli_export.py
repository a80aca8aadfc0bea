"""`deepshrink export` of sentence-encoder artifacts: ONNX with any batch and sequence length, checked against
PyTorch by ONNX Runtime before the command succeeds (a mismatch leaves no file)."""

from __future__ import annotations

import json

import pytest
import torch

import deepshrink
from deepshrink.cli import main
from deepshrink.commands import export as export_cmd
from deepshrink.core.errors import ModelError
from deepshrink.transformers.int8 import quantize_int8

ort = pytest.importorskip("onnxruntime")


def _ids(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30522, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return ids, mask


def _run(path, ids, mask):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return torch.from_numpy(sess.run(None, {names[0]: ids.numpy(), names[1]: mask.numpy()})[0])


def test_an_encoder_exports_without_a_shape_and_runs_at_any_batch_and_length(tmp_path, tiny, capsys):
    deepshrink.save(tiny, tmp_path / "enc.dsk")
    dest = tmp_path / "enc.onnx"
    assert main(["export", str(tmp_path / "enc.dsk"), "--format", "onnx", "--out", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_abs_diff"] < 1e-4 and info["tolerance"] == {"rtol": 1e-3, "atol": 1e-4}
    for batch, length in ((1, 7), (5, 40)):
        ids, mask = _ids(batch, length, batch)
        with torch.no_grad():
            assert torch.allclose(_run(dest, ids, mask), tiny(ids, mask), atol=1e-5)


def test_a_sequence_length_over_the_model_s_maximum_is_refused(tmp_path, tiny, capsys):
    deepshrink.save(tiny, tmp_path / "enc.dsk")
    assert main(["export", str(tmp_path / "enc.dsk"), "--format", "onnx", "--input-shape", "65"]) == 1
    assert "up to 64" in capsys.readouterr().err
    assert not (tmp_path / "enc.onnx").exists()


def test_an_int8_encoder_is_checked_at_the_dynamic_quantization_tolerance(tmp_path, tiny, capsys):
    deepshrink.save(quantize_int8(tiny, weight_bits=8), tmp_path / "q.dsk")
    assert main(["export", str(tmp_path / "q.dsk"), "--format", "onnx", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tolerance"] == {"rtol": 0.0, "atol": export_cmd.DYNAMIC_INT8_TOLERANCE[1]}
    assert info["max_abs_diff"] <= export_cmd.DYNAMIC_INT8_TOLERANCE[1]


def test_an_export_that_does_not_match_fails_and_leaves_no_file(tmp_path, tiny, capsys, monkeypatch):
    deepshrink.save(tiny, tmp_path / "enc.dsk")

    def mismatch(model, path, inputs, rtol, atol):
        raise ModelError(f"ONNX output 0 of {path} differs from PyTorch by up to 0.5 (rtol={rtol}, atol={atol})")

    monkeypatch.setattr(deepshrink.export, "check_onnx", mismatch)
    assert main(["export", str(tmp_path / "enc.dsk"), "--format", "onnx"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from PyTorch" in err
    assert not (tmp_path / "enc.onnx").exists()
