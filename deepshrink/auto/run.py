"""Entry point of automatic compression: split the data, search, store the result, write the run report."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from deepshrink.artifact import StoragePolicy, load, save
from deepshrink.auto.config import AutoConfig
from deepshrink.auto.search import EPS, FINAL_POLICY, AutoResult, _fingerprint, _Search, final_info, open_state
from deepshrink.core.errors import ConfigError, DataError, ModelError
from deepshrink.core.fileio import ensure_dir
from deepshrink.data.base import dataset_digest
from deepshrink.measure.latency import measure_latency
from deepshrink.models.zoo import is_user_model


def split_train(train: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Subset, Subset]:
    """A fixed random hold-out of ``val_fraction`` of ``train`` for decisions; the rest is for training."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"auto: validation fraction must be in (0, 1), got {val_fraction}")
    n = len(train)
    n_val = int(round(val_fraction * n))
    if n_val < 1 or n - n_val < 1:
        raise DataError(f"auto: {n} training samples are too few to hold out a validation split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train, order[n_val:]), Subset(train, order[:n_val])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (bytes, accuracy) points: True where no other point is at most as big and at least as accurate
    with one of the two strictly better."""
    flags = []
    for i, (b, a) in enumerate(points):
        dominated = any((b2 <= b and a2 >= a) and (b2 < b or a2 > a) for j, (b2, a2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def auto_compress(model: nn.Module, *, train: Dataset, val: Dataset, test: Dataset | None, example_inputs: Any,
                  config: AutoConfig, out_dir: str | os.PathLike[str], model_name: str = "model",
                  dataset: str = "data", resume: bool = True, progress: bool | None = None,
                  log: Callable[[str], None] | None = None) -> AutoResult:
    """Compress a trained ``model`` to meet ``config``'s budget within its time budget.

    Decisions use ``val`` only; ``test`` (if given) is measured on the final artifact for the report.
    Writes into ``out_dir``: ``model.dsk`` (Deep Compression storage), report.json/.md/.html with the
    stage table and the tried points, sensitivity/ and ``auto_state.json`` (to resume).
    """
    from deepshrink.report.run import record_stage, write_run_report

    if not isinstance(model, nn.Module):
        raise ModelError(f"auto: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, AutoConfig):
        raise ConfigError(f"auto: config must be an AutoConfig, got {type(config).__name__}")
    say = log or (lambda _msg: None)
    out = ensure_dir(out_dir)
    started = time.perf_counter()
    search = _Search(model, config, train, val, out, progress, say)
    if not search.layers:
        raise ModelError("auto: the model has no Linear or Conv layer to compress")
    fingerprint = _fingerprint(search.baseline, config, [model_name, dataset, dataset_digest(train),
                                                         dataset_digest(val)])
    search.state = open_state(out, fingerprint, resume)
    final, trial, pruned = search.run()

    # The report: baseline, pruned and final stages, each measured from a real artifact file.
    base_path, pruned_path, final_path = out / "baseline.dsk", out / "pruned.dsk", out / "model.dsk"
    save(search.baseline, base_path, StoragePolicy(sparse=False, coding="packed"), info={"stage": "baseline"})
    save(pruned, pruned_path, StoragePolicy(coding="packed"), info={"stage": "pruned"})
    save(final, final_path, FINAL_POLICY, info=final_info(trial["bits"], trial["plan"]))
    decoded = load(final_path, model=copy.deepcopy(search.baseline) if is_user_model(final) else None)
    eval_data = test if test is not None else val
    base = record_stage("baseline", "baseline", search.baseline, example_inputs=example_inputs,
                        eval_data=eval_data, artifact_path=base_path)
    pstage = record_stage("pruned", "prune", pruned, example_inputs=example_inputs, eval_data=eval_data,
                          artifact_path=pruned_path)
    fstage = record_stage("auto: pruned + shared + Huffman", "encode", decoded, example_inputs=example_inputs,
                          eval_data=eval_data, artifact_path=final_path,
                          seconds=time.perf_counter() - started)
    for name in ("preview.dsk", *(p.name for p in out.glob("candidate*.dsk"))):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    trials = search.state["trials"]
    front = pareto_front([(t["bytes"], t["val_accuracy"]) for t in trials])
    for t, on in zip(trials, front):
        t["pareto"] = on
    latency = measure_latency(decoded, example_inputs).median_ms if config.target_latency_ms else None
    val_drop, val_bound = trial["val_drop_pt"], trial["val_drop_bound_pt"]
    test_drop = (100.0 * (base["accuracy"] - fstage["accuracy"])
                 if base["accuracy"] is not None and fstage["accuracy"] is not None else None)
    met = {"accuracy": config.max_drop_pt is None or val_bound <= config.drop_limit + EPS,
           "bytes": config.target_bytes is None or fstage["artifact_bytes"] <= config.target_bytes,
           "latency": config.target_latency_ms is None or (latency is not None
                                                          and latency <= config.target_latency_ms),
           "time": True}
    seconds = time.perf_counter() - started
    met["time"] = seconds <= config.time_budget_s
    run = {"model": model_name, "dataset": dataset, "recipe": "auto", "baseline": base, "stages": [pstage, fstage],
           "budget": {"max_drop_pt": config.max_drop_pt, "target_bytes": config.target_bytes,
                      "target_latency_ms": config.target_latency_ms, "time_budget_s": config.time_budget_s},
           "budget_met": all(met.values()), "budget_checks": met, "seconds": round(seconds, 1),
           "within_time_budget": seconds <= config.time_budget_s,
           "evaluated_on": "test" if test is not None else "validation",
           "val_samples": len(val), "train_samples": len(train),
           "val_baseline_accuracy": search.state["val_baseline"], "val_drop_pt": val_drop,
           "val_drop_se_pt": trial["val_drop_se_pt"], "val_drop_bound_pt": val_bound,
           "test_drop_pt": test_drop, "final_latency_ms": latency, "chosen": {"keep": trial["plan"],
                                                                                 "bits": trial["bits"]},
           "artifact": str(final_path), "artifact_bytes": fstage["artifact_bytes"],
           "trials": trials, "settings": config.to_dict()}
    paths = write_run_report(run, out)
    paths["artifact"] = final_path
    return AutoResult(decoded, run, paths)
