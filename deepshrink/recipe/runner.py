"""Run a recipe: baseline, then each stage in order, one atomic artifact and one measurement per stage.

With an output folder every completed stage is recorded in ``DIR/state.json`` (written atomically after
the stage's artifact), trainer checkpoints live in ``DIR/checkpoints``, and running the same recipe on
the same model and data again resumes: completed stages are skipped and the last artifact is reloaded
(pruning masks and shared codebooks re-attached from it; an unfinished run whose model carried quantizers
resumes from the stage before the first quantizing stage). ``report.json/.md/.html`` are written last.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from deepshrink.artifact import StoragePolicy
from deepshrink.artifact.model_io import round_small_tensors
from deepshrink.core.errors import ConfigError, DataError, DeepShrinkError, ModelError
from deepshrink.core.fileio import atomic_write_text, ensure_dir
from deepshrink.data.base import data_digest, tensors_digest
from deepshrink.measure._runtime import eval_mode
from deepshrink.quantize.modules import input_quantizers
from deepshrink.recipe import schema as S
from deepshrink.recipe import stages as ops
from deepshrink.recipe.loader import LineMap, recipe_to_dict
from deepshrink.recipe.models import check_runs, has_quantizers, load_model, load_weights, model_factory, save_model
from deepshrink.recipe.text_stages import EmbeddingScorer, calibration_needed
from deepshrink.train import distributed, seed_everything
from deepshrink.train.trainer import default_device

STATE_FILE = "state.json"
STATE_VERSION = 1
QUICK_TRAIN = 1024
QUICK_CALIBRATION = 64  # sentences, for the text stages of a --quick run
Event = Callable[[dict[str, Any]], None]


class StageError(ConfigError):
    """A stage failed on the model: the message names the stage (and the recipe line when known)."""


@dataclass
class RunResult:
    """What a run produced: the compressed model, the report dict and where files went."""

    model: nn.Module
    report: dict[str, Any]
    out_dir: Path | None = None
    policy: StoragePolicy = field(default_factory=StoragePolicy)
    resumed: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the compressed model as an artifact with the recipe's storage settings; returns bytes."""
        return save_model(self.model, path, self.policy, info={"recipe": self.report.get("recipe")}).nbytes


def quick_recipe(recipe: S.Recipe) -> S.Recipe:
    """A smoke-test version: at most one epoch per training, one pruning step, 64 calibration sentences."""
    def shrink(spec: S.TrainSpec | None) -> S.TrainSpec | None:
        return spec.model_copy(update={"epochs": min(spec.epochs, 1)}) if spec is not None else None

    stages = []
    for st in recipe.stages:
        upd: dict[str, Any] = {}
        if isinstance(st, S.FinetuneStage):
            upd["epochs"] = min(st.epochs, 1)
        for key in ("retrain", "finetune", "train"):
            if isinstance(getattr(st, key, None), S.TrainSpec):
                upd[key] = shrink(getattr(st, key))
        if isinstance(st, S.PruneStage) and st.method not in S.TRANSFORMER_PRUNING:
            upd["steps"] = 1
        if calibration_needed(st) > QUICK_CALIBRATION:
            upd["calibration"] = QUICK_CALIBRATION
        stages.append(st.model_copy(update=upd))
    return recipe.model_copy(update={"stages": stages})


def _fingerprint(recipe: S.Recipe, model: str, data: str, weights: str | None, quick: bool) -> str:
    wsum = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if weights else None
    blob = json.dumps([recipe_to_dict(recipe), model, data, wsum, quick], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _where(index: int, stage: Any, lines: LineMap | None, source: str | None) -> str:
    line = lines.line(("stages", index)) if lines is not None else None
    head = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
    return f"{head}stage {index} ({stage.kind})"


def _attachments(model: nn.Module) -> dict[str, Any]:
    """Layers whose weight carries a pruning mask or a shared codebook (re-attached on resume), and whether
    the model carries quantizers (not restorable from the artifact: a resume re-runs from that stage)."""
    from deepshrink.prune.masks import get_mask
    from deepshrink.quantize.kmeans import shared_codebook

    masked, shared = [], []
    for name, module in model.named_modules():
        if ".parametrizations" in f".{name}" or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        try:
            if get_mask(module) is not None:
                masked.append(name)
            elif shared_codebook(module) is not None:
                shared.append(name)
        except (AttributeError, KeyError):
            continue
    return {"masked": masked, "shared": shared, "quantized": has_quantizers(model)}


def _reattach(model: nn.Module, attached: dict[str, Any], artifact: Path) -> None:
    """Masks from the zeros of each masked layer; each shared layer's codebook and assignments exactly as the
    artifact stores them (every centroid, used or not), else from its distinct values."""
    from torch.nn.utils import parametrize

    from deepshrink.artifact.tensors import decode_codebook
    from deepshrink.codec import container
    from deepshrink.prune.masks import set_mask
    from deepshrink.quantize.kmeans import SharedCodebook

    modules = dict(model.named_modules())
    for name in attached.get("masked", []):
        if name in modules:
            set_mask(modules[name], (modules[name].weight.detach() != 0).float())
    shared = [n for n in attached.get("shared", []) if n in modules]
    box = container.read_container(artifact) if shared else None
    for name in shared:
        module = modules[name]
        w = module.weight.detach()
        meta = box.meta.get("tensors", {}).get(f"{name}.weight") if isinstance(box.meta, dict) else None
        stored = decode_codebook(meta, tuple(w.shape), box.blobs, f"{artifact}: {name}.weight") \
            if isinstance(meta, dict) else None
        if stored is not None:
            codebook, assign = stored
        else:
            values = torch.unique(w[w != 0])
            assign = torch.full(w.shape, values.numel(), dtype=torch.long)
            nz = w != 0
            assign[nz] = torch.searchsorted(values, w[nz])
            codebook = values.float() if values.numel() else torch.zeros(1)
        parametrize.register_parametrization(module, "weight", SharedCodebook(assign, codebook), unsafe=True)


def _restorable(names: list[str], done: dict[str, Any]) -> dict[str, Any] | None:
    """On an unfinished run, drop from ``done`` every stage from the first whose model carried quantizers
    (integer codes, fake quantizers, activation quantizers: the artifact keeps their values, not the modules
    a later training stage trains through), so they run again; return the last stage left to resume from."""
    if not all(n in done for n in names):
        first = next((i for i, n in enumerate(names) if done.get(n, {}).get("attached", {}).get("quantized")), None)
        for n in names[first:] if first is not None else ():
            done.pop(n, None)
    return next((done[n] for n in reversed(names) if n in done), None)


class _Run:
    def __init__(self, recipe: S.Recipe, out: Path | None, fingerprint: str, on_event: Event | None,
                 writes: bool = True) -> None:
        self.recipe = recipe
        self.out = out
        self.writes = writes  # False on the other ranks of a torchrun job: they read rank 0's state only
        self.fingerprint = fingerprint
        self.on_event = on_event or (lambda e: None)
        self.state: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": fingerprint, "complete": False,
                                      "baseline": None, "stages": {}}

    def load_state(self, restart: bool) -> None:
        if self.out is None:
            return
        path = self.out / STATE_FILE
        if not path.exists() or restart:
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); pass --restart to start over") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ConfigError(f"{path} is not a deepshrink run state; use another output folder or --restart")
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.out} holds a run of another recipe, model, data or weights; "
                              "use another --out, or --restart to overwrite it")
        self.state = state

    def save_state(self) -> None:
        if self.out is not None and self.writes:
            atomic_write_text(self.out / STATE_FILE, json.dumps(self.state, indent=2, sort_keys=True))

    def emit(self, **event: Any) -> None:
        self.on_event(event)


def run_recipe(recipe: S.Recipe, *, model: nn.Module | str | None = None, model_args: dict[str, Any] | None = None,
               data: Any = None, weights: str | os.PathLike[str] | None = None,
               out: str | os.PathLike[str] | None = None, eval_fn: Callable[[nn.Module], float] | None = None,
               pretrained: bool | None = None, quick: bool = False, restart: bool = False,
               progress: bool | None = None, latency: bool | None = None, on_event: Event | None = None,
               lines: LineMap | None = None, source: str | None = None) -> RunResult:
    """Run ``recipe`` on ``model`` (an ``nn.Module``, a zoo name or ``package.module:factory``; default the
    recipe's) with ``data`` (a ``DataSplits`` or a dataset name/folder; default the recipe's).

    Leading ``finetune`` stages train the baseline unless ``pretrained`` (default: True when ``weights``
    are given or ``model`` is a module). ``eval_fn(model) -> accuracy`` replaces test-set accuracy.
    With ``out`` every stage's artifact, ``state.json`` and the reports go there and an interrupted run
    resumes; without it artifacts go to a temporary folder that is removed afterwards.
    """
    from deepshrink.data import DataSplits
    from deepshrink.data import load as load_data
    from deepshrink.data.sentences import TextSplits, is_text_dataset, load_text

    if quick:
        recipe = quick_recipe(recipe)
    # --- the model factory, the data, the output folder: all checked before any work or any file
    if isinstance(model, nn.Module):
        template = copy.deepcopy(model).cpu()
        spec_name = type(model).__name__

        def factory() -> nn.Module:
            return copy.deepcopy(template)
        pretrained = True if pretrained is None else pretrained
    else:
        spec_name = model or recipe.model
        factory = model_factory(spec_name, {**recipe.model_args, **(model_args or {})} if model is None
                                else (model_args or {}))
        pretrained = weights is not None if pretrained is None else pretrained
    if data is None:
        data = recipe.dataset
    if data is None:
        raise ConfigError("no dataset given: pass --data NAME_OR_PATH or set dataset: in the recipe")
    if isinstance(data, (DataSplits, TextSplits)):
        splits = data
    else:
        splits = load_text(data) if is_text_dataset(data) else load_data(data)
    text = splits if isinstance(splits, TextSplits) else None
    train = None if text is not None else (  # sentence encoders: calibration text only, no labelled data
        Subset(splits.train, range(min(QUICK_TRAIN, len(splits.train)))) if quick else splits.train)
    seed_everything(recipe.seed)
    net = factory()
    if weights is not None:
        load_weights(net, weights)
    example: Any
    if text is not None:
        limit = getattr(net, "max_length", None)
        if isinstance(limit, int) and 2 <= limit < text.max_length:  # tokenize no longer than the model takes
            text = splits = replace(text, max_length=limit)
        example = text.example()
    else:
        example = splits.test.tensors[0][:1]
    model_key = spec_name + (json.dumps(model_args, sort_keys=True, default=str) if model_args and not
                             isinstance(model, nn.Module) else "")
    if isinstance(model, nn.Module):  # another module of the same class is another run
        model_key += ":" + tensors_digest(template.state_dict().values())
    data_key = f"{splits.name}:{data_digest(splits)}"  # its contents: another folder of the same format differs
    fingerprint = _fingerprint(recipe, model_key, data_key, os.fspath(weights) if weights else None, quick)
    names = S.stage_names(recipe)
    _preflight(recipe, net, lines, source, text)
    if text is None:
        check_runs(net, spec_name, splits.name, example)
        _check_augment(recipe, example, lines, source)

    # under torchrun every rank runs the stages (training is distributed) but only rank 0 writes the run folder;
    # the others write their copies of the artifacts to a scratch folder and read rank 0's state to resume alike
    ctx = distributed.setup(distributed.local_device(default_device())) if distributed.requested_world_size() > 1 \
        or distributed.is_initialized() else None
    main = ctx is None or ctx.is_main
    created = out is not None and not Path(out).exists() and main
    tmp = scratch = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="deepshrink-run-")
        folder = Path(tmp.name)
    else:
        folder = ensure_dir(out) if main else Path(out)
        if not main:
            scratch = tempfile.TemporaryDirectory(prefix=f"deepshrink-rank{ctx.rank}-")
    written = Path(scratch.name) if scratch is not None else folder
    run = _Run(recipe, None if tmp else folder, fingerprint, on_event, writes=main)
    try:
        previous_exports = _previous_exports(folder) if restart and tmp is None else []
        if ctx is not None and out is not None:
            distributed.barrier(ctx)  # rank 0 has made the folder; nobody has written yet
        run.load_state(restart)
        distributed.barrier(ctx)  # every rank has read the same state before rank 0 changes anything
        if restart and main:  # nothing of the previous run may look like this run's result
            stale = [*previous_exports, *(folder / "checkpoints").glob("*.pt"), *(folder / "plots").glob("*.png"),
                     *(folder / n for n in ("report.json", "report.md", "report.html", "baseline.dsk")),
                     *(p for p in folder.glob("*.dsk") if re.fullmatch(r"\d\d-.+\.dsk", p.name))]
            for path in stale:
                path.unlink(missing_ok=True)
        run.save_state()  # claims the folder for this run: checkpoints of another recipe are never resumed
        if main:
            ensure_dir(folder / "checkpoints")
        distributed.barrier(ctx)
        state = ops.RunState(net, train, None if text is not None else splits.train, example, seed=recipe.seed,
                             progress=progress if main else False, checkpoint_dir=folder / "checkpoints",
                             factory=factory, text=text)
        result = _execute(run, state, folder, names, splits, eval_fn, pretrained,
                          recipe.latency if latency is None else latency, lines, source, spec_name, written)
    except BaseException as exc:
        if created and not run.state["stages"] and run.state["baseline"] is None \
                and not isinstance(exc, KeyboardInterrupt):
            shutil.rmtree(folder, ignore_errors=True)  # nothing worth resuming: leave no half-made folder
        raise
    finally:
        for folder_left in (tmp, scratch):
            if folder_left is not None:
                folder_left.cleanup()
    return result


def _previous_exports(folder: Path) -> list[Path]:
    """The files the export stages of the run recorded in ``folder`` wrote (inside the folder only)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        entries = list(state.get("stages", {}).values())
    except (OSError, ValueError, AttributeError):
        return []
    out = []
    for entry in entries:
        record = entry.get("record") if isinstance(entry, dict) else None
        artifact = record.get("artifact") if isinstance(record, dict) and entry.get("kind") == "export" else None
        if isinstance(artifact, str):
            path = Path(artifact)
            if path.resolve().is_relative_to(folder.resolve()):
                out.append(path)
    return out


def _text_only(stage: Any) -> bool:
    return (isinstance(stage, S.PruneStage) and stage.method in S.TRANSFORMER_PRUNING) or (
        isinstance(stage, S.QuantizeStage) and (stage.scheme in ("int8_per_token", "none")
                                                or stage.embedding is not None))


def _preflight(recipe: S.Recipe, model: nn.Module, lines: LineMap | None, source: str | None,
               text: Any = None) -> None:
    """Layer patterns of the stages before the first architecture change must match the model; on a text
    dataset every stage must work without labels, read no more calibration text than there is, and the model
    must be a BERT-family sentence encoder; a sentence encoder needs a text dataset."""
    if text is not None:
        from deepshrink.recipe.text_stages import calibration_needed, check_text_stage
        from deepshrink.transformers.model import bert_layers

        from deepshrink.prune.select import matches

        bert_layers(model)
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        quantized = None  # index of the first int8 quantize stage: structured pruning must come before it
        embedded = None  # index of the first stage that compresses the embedding table
        for i, stage in enumerate(recipe.stages):
            try:
                check_text_stage(stage)
                if isinstance(stage, S.QuantizeStage) and stage.scheme == "int8_per_token":
                    if quantized is not None:
                        raise ConfigError(f"stage {quantized} already made the Linear layers int8")
                    for p in stage.skip:
                        if not any(matches(S.resolve_pattern(p), n, m) for n, m in linears):
                            raise ConfigError(f"skip: pattern {p!r} matches no Linear layer of the encoder "
                                              f"(e.g. {linears[0][0] if linears else '-'})")
                    quantized = i
                if isinstance(stage, S.QuantizeStage) and stage.embedding is not None:
                    if embedded is not None:
                        raise ConfigError(f"stage {embedded} already compressed the embedding table")
                    embedded = i
                if isinstance(stage, S.PruneStage) and quantized is not None:
                    raise ConfigError(f"method {stage.method} prunes float Linear layers, and stage {quantized} "
                                      "made them int8: put the prune stage before the quantize stage")
                if calibration_needed(stage) > len(text.train):
                    raise ConfigError(f"calibration: {calibration_needed(stage)} sentences asked, text dataset "
                                      f"{text.name!r} has {len(text.train)}")
            except ConfigError as exc:
                raise StageError(f"{_where(i, stage, lines, source)}: {exc}") from None
        return
    arch = getattr(model, "_deepshrink_arch", None)
    if isinstance(arch, dict) and arch.get("zoo") == "hf_bert":
        raise ModelError(f"{type(model).__name__} is a sentence encoder: use a text dataset (--data pydocs)")
    masked = None  # the first stage that leaves pruning masks on the weights
    coded = None  # the first stage that quantizes or shares weights
    for i, stage in enumerate(recipe.stages):
        if isinstance(stage, S.PruneStage) and stage.method == "structured":
            earlier = masked if masked is not None else coded
            if earlier is not None:
                what = "left pruning masks on the weights" if masked is not None else "quantized the weights"
                raise StageError(f"{_where(i, stage, lines, source)}: structured pruning removes whole channels "
                                 f"of plain weights, and stage {earlier} {what}: put the structured stage "
                                 "before it")
        if isinstance(stage, (S.QuantizeStage, S.ClusterStage)) and coded is None:
            coded = i
        if isinstance(stage, S.PruneStage) and stage.method in ("magnitude", "unstructured") and masked is None:
            masked = i
        if isinstance(stage, S.ClusterStage):
            masked = None  # clustering bakes the masks in
        if isinstance(stage, S.QuantizeStage) and stage.scheme == "kmeans" and masked is not None:
            raise StageError(f"{_where(i, stage, lines, source)}: scheme kmeans needs plain weights, and stage "
                             f"{masked} left pruning masks on them: use kind: cluster, k-means that keeps pruned "
                             "weights at zero")
        if _text_only(stage):
            raise StageError(f"{_where(i, stage, lines, source)}: needs a text dataset (e.g. --data pydocs) and a "
                             "BERT-family sentence encoder (e.g. --model minilm)")
    for i, stage in enumerate(recipe.stages):
        if isinstance(stage, (S.FactorizeStage, S.DistillStage)):
            return
        try:
            ops.check_selection(model, stage)
        except ConfigError as exc:
            raise StageError(f"{_where(i, stage, lines, source)}: {exc}") from None
        if isinstance(stage, S.PruneStage) and stage.method == "structured":
            return  # later stages see other layer names


def _check_augment(recipe: S.Recipe, example: torch.Tensor, lines: LineMap | None, source: str | None) -> None:
    """Every training ``augment`` of the recipe fits the data's images, before any stage runs."""
    from deepshrink.data.augment import parse_augment

    for i, stage in enumerate(recipe.stages):
        specs = [stage, *(getattr(stage, k) for k in type(stage).model_fields)]  # the stage and its {train} blocks
        for spec in specs:
            if isinstance(spec, S.TrainSpec) and spec.augment is not None:
                try:
                    parse_augment(spec.augment).check(tuple(example.shape), example.dtype)
                except DataError as exc:
                    raise StageError(f"{_where(i, stage, lines, source)}: {exc}") from None


def _execute(run: _Run, state: ops.RunState, folder: Path, names: list[str], splits: Any,
             eval_fn: Callable[[nn.Module], float] | None, pretrained: bool, latency: bool,
             lines: LineMap | None, source: str | None, spec_name: str, written: Path) -> RunResult:
    """The stages in order, resuming after those done. ``folder`` holds the run (state, artifacts to resume
    from); ``written`` is where this process writes its artifacts (``folder``, or a scratch folder on the
    ranks of a torchrun job other than rank 0)."""
    from deepshrink.report.run import record_stage

    recipe = run.recipe
    scorer = None
    if state.text is not None and eval_fn is None:
        scorer = EmbeddingScorer(state.text, progress=state.progress, compiled=any(
            isinstance(st, S.QuantizeStage) and st.compile for st in recipe.stages))
    eval_data = None if eval_fn is not None or scorer is not None else splits.test

    def measure(name: str, kind: str, path: Path | None, seconds: float | None) -> dict[str, Any]:
        rec = record_stage(name, kind, state.model, example_inputs=state.example, eval_data=eval_data,
                           artifact_path=path, seconds=seconds, latency=latency)
        if eval_fn is not None:  # as the built-in path: eval mode (batch norm, dropout), no gradients
            with eval_mode(state.model), torch.no_grad():
                rec["accuracy"] = float(eval_fn(state.model))
        elif scorer is not None:
            rec.update(scorer.set_reference(state.model) if name == "baseline" else scorer(state.model))
        if eval_data is not None and path is not None and input_quantizers(state.model):
            # the model in memory simulates activation quantization, which its artifact does not store: the
            # file's own accuracy is recorded too, and the report says which is which
            from deepshrink.measure.accuracy import evaluate

            rec["artifact_accuracy"] = evaluate(load_model(path, state.factory), eval_data).accuracy
            note = (f"{name}: accuracy {100 * rec['accuracy']:.2f}% with simulated activation quantization; its "
                    f"artifact stores weights only and scores {100 * rec['artifact_accuracy']:.2f}%")
            if note not in state.notes:
                state.notes.append(note)
        return rec

    n_base = S.baseline_stage_count(recipe)  # index of the first compression stage
    done = run.state["stages"]
    last = _restorable(names, done)
    resumed = [n for n in names if n in done]
    if scorer is not None:
        state.notes.append(scorer.note)
        if run.state["baseline"] is not None:  # resumed: the saved baseline is the reference, loaded when needed
            base_path = folder / run.state.get("baseline_resume", "baseline.dsk")
            scorer.reference_loader = lambda: load_model(base_path, state.factory)
    if last is not None:  # resume from the last completed stage's artifact
        state.model = load_model(folder / last["resume_artifact"], state.factory)
        _reattach(state.model, last.get("attached", {}), folder / last["resume_artifact"])
        for i, stage in enumerate(recipe.stages):
            if names[i] in done and isinstance(stage, S.EncodeStage):
                ops.encode(stage, state, names[i])  # restores the storage policy (rounding is idempotent)
    records: list[dict[str, Any]] = []
    total = len(names)
    for i, stage in enumerate(recipe.stages):
        name = names[i]
        if i < n_base and pretrained:
            run.emit(event="skip", index=i, total=total, name=name, kind=stage.kind, reason="pretrained weights")
            continue
        if i == n_base and run.state["baseline"] is None:
            seed_everything(recipe.seed)
            path = written / "baseline.dsk"
            trained = sum(done[n].get("seconds", 0.0) for n in names[:n_base] if n in done)
            save_model(state.model, path, StoragePolicy(sparse=False, coding="packed"), info={"stage": "baseline"})
            run.state["baseline"] = measure("baseline", "baseline", path, trained)
            run.state["baseline_resume"] = path.name
            run.save_state()
            run.emit(event="done", index=i, total=total, name="baseline", kind="baseline",
                     record=run.state["baseline"])
        if i == n_base:
            seed_everything(recipe.seed)  # compression starts from the same RNG state, resumed or not
        if name in done:
            if i >= n_base:
                records.append(done[name]["record"])
            run.emit(event="skip", index=i, total=total, name=name, kind=stage.kind, reason="already complete")
            continue
        run.emit(event="start", index=i, total=total, name=name, kind=stage.kind)
        t0 = time.perf_counter()
        try:
            export_path = None
            if isinstance(stage, S.ExportStage):
                export_path = ops.export(stage, state, name, written)
            else:
                getattr(ops, stage.kind)(stage, state, name)
        except DeepShrinkError as exc:
            raise type(exc)(f"{_where(i, stage, lines, source)} {name!r}: {exc}") from None
        seconds = time.perf_counter() - t0
        if export_path is not None:
            resume = last["resume_artifact"] if last else run.state.get("baseline_resume", "baseline.dsk")
            path = export_path
        else:
            path = written / f"{i:02d}-{name}.dsk"
            if state.policy.small_dtype == "float16":  # a stage after encode may have trained: round again
                round_small_tensors(state.model)
            save_model(state.model, path, state.policy, info={"stage": name, "recipe": recipe.name})
            resume = path.name
        record = measure(name, stage.kind, path, seconds) if i >= n_base else None
        entry = {"index": i, "kind": stage.kind, "resume_artifact": resume, "attached": _attachments(state.model),
                 "record": record, "seconds": seconds}
        done[name] = entry
        last = entry
        run.save_state()
        ckpt = state.checkpoint(name)
        if ckpt is not None and run.writes:  # rank 0's file: the other ranks of a torchrun job only read it
            with contextlib.suppress(OSError):
                ckpt.unlink()
        if record is not None:
            records.append(record)
        run.emit(event="done", index=i, total=total, name=name, kind=stage.kind, record=record or {},
                 seconds=seconds)
    if run.state["baseline"] is None:  # a recipe of finetune stages only: the trained model is the baseline
        path = written / "baseline.dsk"
        save_model(state.model, path, StoragePolicy(sparse=False, coding="packed"), info={"stage": "baseline"})
        run.state["baseline"] = measure("baseline", "baseline", path, None)
    report = _report(run, records, spec_name, splits.name, state)
    run.state["complete"] = True
    if run.out is not None and run.writes:
        from deepshrink.report.run import write_run_report

        write_run_report(report, folder)
        run.save_state()
        with contextlib.suppress(OSError):
            (folder / "checkpoints").rmdir()
    else:
        report = _drop_paths(report)
    return RunResult(state.model.eval(), report, run.out, state.policy, resumed)


def _report(run: _Run, records: list[dict[str, Any]], model: str, dataset: str,
            state: ops.RunState) -> dict[str, Any]:
    base = run.state["baseline"]
    stored = [r for r in records if r.get("kind") != "export"]
    final = stored[-1] if stored else base
    fp32 = 4 * base["params"]
    ratio = fp32 / final["artifact_bytes"] if final.get("artifact_bytes") else None
    drop = (100.0 * (base["accuracy"] - final["accuracy"])
            if base.get("accuracy") is not None and final.get("accuracy") is not None else None)
    return {"model": model, "dataset": dataset, "recipe": run.recipe.name, "seed": run.recipe.seed,
            "reference": run.recipe.reference, "recipe_settings": recipe_to_dict(run.recipe),
            "baseline": base, "stages": records, "fp32_bytes": fp32, "compression_ratio": ratio,
            "accuracy_drop_points": drop, "final_artifact": final.get("artifact"), "notes": state.notes}


def _drop_paths(report: dict[str, Any]) -> dict[str, Any]:
    """Without an output folder the artifacts were temporary: keep their sizes, drop their paths."""
    report = dict(report, final_artifact=None)
    for rec in [report["baseline"], *report["stages"]]:
        rec["artifact"] = None
    return report
