"""``deepshrink auto``: pick per-layer kept fractions and weight bits for a budget, within a wall time.

1. Sensitivity scan on the validation split (one layer pruned at a time, no retraining).
2. Pruning walk: plans from :func:`deepshrink.auto.plan.prune_path`, each step pruning further
   from the last accepted model and retraining briefly; a step that breaks the budget on the
   validation split is undone and the half-way plan is tried instead.
3. Weight bits: a bits scan of the pruned model, a greedy per-layer choice that spends what is
   left of the budget where it saves most bytes, k-means sharing and centroid fine-tuning;
   bits go back up if validation accuracy falls out of the budget.
4. The chosen model is stored as Deep Compression (pruned + shared + Huffman) and reported.

Every step checks the clock (steps are timed, the finishing work is reserved), so the run ends
inside ``time_budget_s``. State is saved in the output folder after every step; running again
with the same settings resumes from the last accepted model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deepshrink.artifact import StoragePolicy, save
from deepshrink.artifact.model_io import round_small_tensors
from deepshrink.auto.config import AutoConfig
from deepshrink.auto.plan import Plan, estimate_bytes, midpoint, next_step, prune_path
from deepshrink.core.errors import ArtifactError, ConfigError
from deepshrink.core.fileio import atomic_write_text, ensure_dir
from deepshrink.measure.accuracy import evaluate
from deepshrink.prune.masks import remove_masks, set_mask
from deepshrink.prune.unstructured import prune_layer
from deepshrink.quantize.kmeans import share_weights
from deepshrink.sensitivity.scan import SensitivityResult, scan, weight_layers, write_sensitivity
from deepshrink.train import Trainer

STATE = "auto_state.json"
ACCEPTED = "accepted.dsk"
FINAL_POLICY = StoragePolicy(coding="auto", small_dtype="float16")
SOLO_FACTOR = 0.7  # a single-layer step keeps this share of the layer's weights
EPS = 1e-9  # accuracy drops are multiples of 1/n; do not let float rounding decide a tie


class Clock:
    """Wall time left of the budget; ``fits(seconds)`` keeps ``reserve`` seconds for finishing work."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def fits(self, seconds: float, reserve: float = 0.0) -> bool:
        return self.left() >= seconds + reserve


@dataclass
class AutoResult:
    """The compressed model (decoded from its artifact), the report dict and the files written."""

    model: nn.Module
    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def artifact(self) -> Path:
        return self.paths["artifact"]


def _fingerprint(model: nn.Module, cfg: AutoConfig, extra: list[Any]) -> str:
    """Identifies the run: settings, data names and the baseline's weights (so a resume is safe)."""
    h = hashlib.sha256(json.dumps([cfg.to_dict(), extra], sort_keys=True, default=str).encode())
    with torch.no_grad():
        for t in model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def final_info(bits: dict[str, int], plan: Any) -> dict[str, Any]:
    """The metadata of auto's final artifact (and of every candidate, so their bytes are the final file's)."""
    return {"stage": "auto", "pipeline": "auto", "bits": dict(bits), "plan": plan}


class _Search:
    """One auto run; split into methods so each phase can check the clock and save state."""

    def __init__(self, model: nn.Module, cfg: AutoConfig, train: Dataset, val: Dataset, out: Path,
                 progress: bool | None, log: Callable[[str], None]) -> None:
        self.cfg, self.train, self.val, self.out, self.progress, self.log = cfg, train, val, out, progress, log
        self.baseline = copy.deepcopy(model).cpu().eval()
        remove_masks(self.baseline)
        self.clock = Clock(cfg.time_budget_s)
        self.state: dict[str, Any] = {}
        self.layers = list(weight_layers(self.baseline))
        self.numels = {n: m.weight.numel() for n, m in weight_layers(self.baseline).items()}
        self.epoch_s = 0.0
        self.base_hits: torch.Tensor | None = None

    # -- measurements -------------------------------------------------------------------------
    def score(self, model: nn.Module) -> float:
        return evaluate(model, self.val).accuracy

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """Validation accuracy and the standard error (points) of its difference from the baseline's.

        The error is that of the mean of paired per-sample differences (baseline right / model wrong and
        the reverse), so it is small when the two models fail on the same samples."""
        ev = evaluate(model, self.val)
        if self.base_hits is None:
            self.base_hits = evaluate(self.baseline, self.val).hits
        diff = self.base_hits.double() - ev.hits.double()
        return ev.accuracy, 100.0 * float(diff.std(unbiased=False)) / math.sqrt(diff.numel())

    def drop(self, acc: float) -> float:
        return 100.0 * (self.state["val_baseline"] - acc)

    def bound(self, acc: float, se: float) -> float:
        """The drop the budget is checked against: measured drop + ``confidence`` standard errors."""
        return self.drop(acc) + self.cfg.confidence * se

    def within(self, acc: float, se: float, limit: float | None) -> bool:
        return limit is None or self.bound(acc, se) <= limit + EPS

    def _scored(self, acc: float, se: float) -> dict[str, float]:
        """The accuracy fields of a trial record."""
        return {"val_accuracy": acc, "val_drop_pt": self.drop(acc), "val_drop_se_pt": se,
                "val_drop_bound_pt": self.bound(acc, se)}

    def _estimate_epoch(self) -> float:
        """Seconds per training epoch: measured once training has run, else from a timed evaluation."""
        if self.epoch_s:
            return self.epoch_s
        start = time.perf_counter()
        evaluate(self.baseline, self.val)
        per_sample = (time.perf_counter() - start) / max(1, len(self.val))
        return 4.0 * per_sample * len(self.train)  # forward + backward + optimizer ~ 4 forward passes

    def _fit(self, model: nn.Module, cfg: Any, description: str) -> None:
        if cfg.epochs == 0:
            return
        start = time.perf_counter()
        Trainer(model, cfg, progress=self.progress, description=description).fit(self.train)
        model.cpu()
        self.epoch_s = (time.perf_counter() - start) / cfg.epochs

    def _reserve(self) -> float:
        """Seconds kept for the bits phase and the final report: a bits scan, two fine-tunings, measuring."""
        scan_s = 2.0 * len(self.layers) * (len(self.cfg.bits) + 1) * self._eval_s()
        return scan_s + 2.0 * self.cfg.finetune.epochs * self._estimate_epoch() + 30.0 + 10 * self._eval_s()

    def _eval_s(self) -> float:
        if "eval_s" not in self.state:
            start = time.perf_counter()
            evaluate(self.baseline, self.val)
            self.state["eval_s"] = time.perf_counter() - start
        return float(self.state["eval_s"])

    def _save_state(self) -> None:
        atomic_write_text(self.out / STATE, json.dumps(self.state, indent=2, sort_keys=True))

    def _trial(self, **fields: Any) -> dict[str, Any]:
        trial = {"n": len(self.state["trials"]), "elapsed_s": round(self.clock.elapsed(), 1), **fields}
        self.state["trials"].append(trial)
        self._save_state()
        verdict = "accepted" if trial.get("accepted") else "rejected"
        self.log(f"[{trial['elapsed_s']:.0f}s] {trial['phase']} #{trial['n']}: val {100 * trial['val_accuracy']:.2f}% "
                 f"({-trial['val_drop_pt']:+.2f} ± {trial['val_drop_se_pt']:.2f} pt), ~{trial['bytes']:,} bytes, "
                 f"{verdict}")
        return trial

    def _preview_bytes(self, model: nn.Module, bits: int = 4) -> int:
        """Bytes of the model stored as Deep Compression with ``bits``-bit sharing (not fine-tuned)."""
        trial = copy.deepcopy(model)
        mods = weight_layers(trial)
        for name in self.layers:
            share_weights(mods[name], bits)
        round_small_tensors(trial)
        return save(trial, self.out / "preview.dsk", FINAL_POLICY).nbytes

    # -- phase 1: pruning ----------------------------------------------------------------------
    def prune_phase(self, sens: SensitivityResult) -> nn.Module:
        cfg, st = self.cfg, self.state
        path = [dict(p) for p in st.setdefault("path", prune_path(sens))]
        current = self._accepted_model()
        accepted: Plan = st.setdefault("accepted_plan", dict.fromkeys(self.layers, 1.0))
        limit = cfg.drop_limit * cfg.prune_share if cfg.drop_limit is not None else None
        while st.get("phase", "prune") == "prune":
            rejected = st.get("rejected_plan")
            solo = None
            if rejected is not None:
                plan = {n: min(accepted[n], k) for n, k in midpoint(accepted, rejected).items()}
                idx = st.get("accepted_index", -1)
                if (st.get("bisections", 0) >= 4
                        or estimate_bytes(self.numels, plan, 4) > 0.93 * estimate_bytes(self.numels, accepted, 4)):
                    # Stalled: first prune one layer alone (the biggest not yet tried), since a step of all
                    # layers together may fail because of one of them; then retrain the accepted model longer
                    # (if time allows) and try the joint step again.
                    solo = self._solo_layer(accepted) if cfg.explore else None
                    if solo is None:
                        if st.get("rests", 0) >= 6 or not self._rest(current, accepted, limit):
                            break
                        current = self._accepted_model()
                        continue
                    plan = {**accepted, solo: round(max(min(cfg.keeps), SOLO_FACTOR * accepted[solo]), 5)}
            else:
                idx = next_step(path, self.numels, st.get("accepted_index", -1), cfg.step_factor)
                if idx >= len(path) or path[idx] == accepted:
                    break
                plan = path[idx]
            step_s = cfg.retrain.epochs * self._estimate_epoch() + 3 * self._eval_s()
            if not self.clock.fits(step_s, self._reserve()):
                self.log(f"[{self.clock.elapsed():.0f}s] pruning stops: no time left for another step")
                break
            work = copy.deepcopy(current)
            mods = weight_layers(work)
            for name, keep in plan.items():
                prune_layer(mods[name], keep)
            self._fit(work, cfg.retrain.replace(seed=cfg.retrain.seed + len(st["trials"])),
                      f"auto prune #{len(st['trials'])}")
            acc, se = self.measure(work)
            ok = self.within(acc, se, limit)
            if not ok and self.clock.fits(step_s, self._reserve()):
                # One more round of retraining (masks still on) before giving the step up.
                self._fit(work, cfg.retrain.replace(seed=cfg.retrain.seed + 1000 + len(st["trials"])),
                          f"auto prune #{len(st['trials'])} (recovery)")
                acc, se = self.measure(work)
                ok = self.within(acc, se, limit)
            remove_masks(work)
            nbytes = self._preview_bytes(work)
            self._trial(phase="prune", plan=plan, bits=None, **self._scored(acc, se),
                        bytes=nbytes, bytes_kind="preview (4-bit sharing, not fine-tuned)", accepted=ok,
                        **({"note": f"{solo} alone"} if solo is not None else {}))
            if solo is not None:
                if ok:
                    current, accepted = work, plan
                    st["accepted_plan"] = plan
                    st["bisections"], st["solo_failed"] = 0, []
                    save(current, self.out / ACCEPTED, StoragePolicy(coding="packed"))
                else:
                    st["solo_failed"] = [*st.get("solo_failed", []), solo]
                self._save_state()
                continue
            if (ok and limit is None and rejected is None and cfg.target_bytes is not None
                    and nbytes <= cfg.target_bytes):
                # a size budget alone: the step went past the target; look back for the least pruned plan
                # that still meets it (loses less accuracy)
                work, plan = self._bytes_boundary(current, accepted, work, plan, acc, step_s)
            if ok:
                current, accepted = work, plan
                st["accepted_plan"] = plan
                if rejected is None:
                    st["accepted_index"] = idx
                save(current, self.out / ACCEPTED, StoragePolicy(coding="packed"))
            else:
                st["rejected_plan"] = plan
                if rejected is not None:
                    st["bisections"] = st.get("bisections", 0) + 1
            if rejected is not None and ok:
                st["bisections"] = st.get("bisections", 0) + 1
            if cfg.target_bytes is not None and ok and nbytes <= cfg.target_bytes:
                break
            self._save_state()
        st["phase"] = "bits"
        self._save_state()
        return current

    def _bytes_boundary(self, lo_model: nn.Module, lo_plan: Plan, hi_model: nn.Module, hi_plan: Plan,
                        hi_acc: float, step_s: float, rounds: int = 3) -> tuple[nn.Module, Plan]:
        """Bisect (in log kept fraction) between the last plan over the size target (``lo``) and one that
        meets it (``hi``); returns the most accurate plan seen that meets the target."""
        cfg = self.cfg
        best = (hi_acc, hi_model, hi_plan)
        for _ in range(rounds):
            mid = {n: min(lo_plan[n], k) for n, k in midpoint(lo_plan, hi_plan).items()}
            if mid in (lo_plan, hi_plan) or not self.clock.fits(step_s, self._reserve()):
                break
            work = copy.deepcopy(lo_model)
            mods = weight_layers(work)
            for name, keep in mid.items():
                prune_layer(mods[name], keep)
            self._fit(work, cfg.retrain.replace(seed=cfg.retrain.seed + len(self.state["trials"])),
                      f"auto prune #{len(self.state['trials'])} (size boundary)")
            acc, se = self.measure(work)
            remove_masks(work)
            nbytes = self._preview_bytes(work)
            meets = nbytes <= cfg.target_bytes
            self._trial(phase="prune", plan=mid, bits=None, **self._scored(acc, se),
                        bytes=nbytes, bytes_kind="preview (4-bit sharing, not fine-tuned)", accepted=meets,
                        note="size boundary")
            if meets:
                hi_plan = mid
                if acc >= best[0]:
                    best = (acc, work, mid)
            else:
                lo_model, lo_plan = work, mid
        return best[1], best[2]

    def _solo_layer(self, accepted: Plan) -> str | None:
        """The layer with the most estimated bytes that can still be pruned and has not failed alone since
        the last accepted step, or None."""
        failed = set(self.state.get("solo_failed", []))
        floor = min(self.cfg.keeps)
        options = [n for n in self.layers if n not in failed and accepted[n] * SOLO_FACTOR >= floor]
        if not options:
            return None
        return max(options, key=lambda n: estimate_bytes({n: self.numels[n]}, accepted, 4))

    def _accepted_model(self) -> nn.Module:
        """The last accepted pruned model from ``accepted.dsk`` (weights into a copy of the baseline)."""
        from deepshrink.recipe.models import load_weights

        model = copy.deepcopy(self.baseline)
        if (self.out / ACCEPTED).exists():
            load_weights(model, self.out / ACCEPTED)
        return model

    def _rest(self, current: nn.Module, plan: Plan, limit: float | None) -> bool:
        """One more retraining round of the accepted model with its zeros masked; kept if still in budget."""
        cfg, st = self.cfg, self.state
        step_s = cfg.retrain.epochs * self._estimate_epoch() + 3 * self._eval_s()
        if not self.clock.fits(step_s, self._reserve()):
            return False
        st["rests"] = st.get("rests", 0) + 1
        work = copy.deepcopy(current)
        for module in weight_layers(work).values():
            set_mask(module, (module.weight.detach() != 0).float())
        self._fit(work, cfg.retrain.replace(seed=cfg.retrain.seed + 2000 + len(st["trials"])),
                  f"auto retrain #{len(st['trials'])}")
        remove_masks(work)
        acc, se = self.measure(work)
        ok = self.within(acc, se, limit)
        self._trial(phase="prune", plan=plan, bits=None, **self._scored(acc, se),
                    bytes=self._preview_bytes(work), bytes_kind="preview (4-bit sharing, not fine-tuned)",
                    accepted=ok, note="accepted model retrained longer")
        if ok:
            save(work, self.out / ACCEPTED, StoragePolicy(coding="packed"))
        st["bisections"], st["solo_failed"] = 0, []
        st.pop("rejected_plan", None)
        self._save_state()
        return True

    # -- phase 2: weight bits ------------------------------------------------------------------
    def _bits_gain(self, name: str, bits: dict[str, int], bits_sens: SensitivityResult,
                   keeps: dict[str, float]) -> tuple[float, float] | None:
        """(points lost, bytes per point) of lowering ``name`` one step on the bits grid, or None at the bottom."""
        grid = sorted(self.cfg.bits, reverse=True)
        i = grid.index(bits[name])
        if i + 1 >= len(grid):
            return None
        curve = bits_sens.layers[name]
        lost = (curve.drop_at_bits(bits_sens.baseline, grid[i + 1])
                - curve.drop_at_bits(bits_sens.baseline, bits[name])) * 100.0
        saved = (estimate_bytes({name: self.numels[name]}, keeps, bits[name])
                 - estimate_bytes({name: self.numels[name]}, keeps, grid[i + 1]))
        return max(0.0, lost), saved / (max(lost, 0.0) + 0.02)

    def _kept(self, pruned: nn.Module) -> dict[str, float]:
        return {n: max(1e-6, 1.0 - _sparsity(m)) for n, m in weight_layers(pruned).items() if n in self.layers}

    def choose_bits(self, pruned: nn.Module, bits_sens: SensitivityResult, budget_pt: float,
                    target: float | None) -> tuple[dict[str, int], list[str]]:
        """Greedy: from the most bits, lower the layer that saves most bytes per point lost, within budget."""
        grid = sorted(self.cfg.bits, reverse=True)
        keeps = self._kept(pruned)
        bits = dict.fromkeys(self.layers, grid[0])
        spent, order = 0.0, []
        while True:
            best, best_gain, best_lost = None, 0.0, 0.0
            for name in self.layers:
                step = self._bits_gain(name, bits, bits_sens, keeps)
                if step is None:
                    continue
                lost, gain = step
                within = target is not None or spent + lost <= budget_pt
                if within and gain > best_gain:
                    best, best_gain, best_lost = name, gain, lost
            if best is None:
                break
            if target is not None and estimate_bytes(self.numels, keeps, bits) <= target:
                break
            spent += best_lost
            bits[best] = grid[grid.index(bits[best]) + 1]
            order.append(best)
        return bits, order

    def _probe_lower(self, bits: dict[str, int], bits_sens: SensitivityResult, keeps: dict[str, float],
                     tried: set[tuple[tuple[str, int], ...]]) -> dict[str, int] | None:
        """One more bit reduction beyond the scan's estimate (fine-tuning often recovers more than the scan
        predicts): the untried layer step saving most bytes per point, or None when none is left."""
        grid = sorted(self.cfg.bits, reverse=True)
        options = []
        for name in self.layers:
            step = self._bits_gain(name, bits, bits_sens, keeps)
            if step is None:
                continue
            lower = {**bits, name: grid[grid.index(bits[name]) + 1]}
            if tuple(sorted(lower.items())) not in tried:
                options.append((step[1], lower))
        return max(options, key=lambda o: o[0])[1] if options else None

    def bits_phase(self, pruned: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        cfg, st = self.cfg, self.state
        pruned_acc, pruned_se = self.measure(pruned)
        self.log(f"[{self.clock.elapsed():.0f}s] bits scan of the pruned model")
        bits_sens = scan(pruned, self.score, keeps=(1.0,), bits=cfg.bits, progress=self.progress)
        left_pt = (cfg.drop_limit - self.bound(pruned_acc, pruned_se)) if cfg.drop_limit is not None else math.inf
        bits, order = self.choose_bits(pruned, bits_sens, max(0.0, left_pt), cfg.target_bytes)
        candidates: list[tuple[nn.Module, dict[str, Any]]] = []
        keeps = self._kept(pruned)
        tried: set[tuple[tuple[str, int], ...]] = set()
        accepted_bits: dict[str, int] | None = None
        while True:
            finetune = cfg.finetune
            need = finetune.epochs * self._estimate_epoch() + 3 * self._eval_s() + 30.0
            if candidates and not self.clock.fits(need):
                break
            if not self.clock.fits(need):  # no time for fine-tuning at all: share only
                finetune = finetune.replace(epochs=0)
            tried.add(tuple(sorted(bits.items())))
            work = copy.deepcopy(pruned)
            mods = weight_layers(work)
            for name, b in bits.items():
                share_weights(mods[name], b)
            self._fit(work, finetune.replace(seed=finetune.seed + len(candidates)) if cfg.explore else finetune,
                      "auto centroids")
            work.cpu()
            round_small_tensors(work)
            path = self.out / f"candidate{len(candidates)}.dsk"
            # the metadata model.dsk gets (auto.run): the bytes judged are the delivered file's
            nbytes = save(work, path, FINAL_POLICY, info=final_info(bits, st.get("accepted_plan"))).nbytes
            acc, se = self.measure(work)
            ok = (self.within(acc, se, cfg.drop_limit)
                  and (cfg.target_bytes is None or nbytes <= cfg.target_bytes))
            trial = self._trial(phase="bits", plan=st.get("accepted_plan"), bits=dict(bits), **self._scored(acc, se),
                                bytes=nbytes, bytes_kind="artifact", accepted=ok,
                                artifact=str(path), note="probe" if accepted_bits is not None else "")
            candidates.append((work, trial))
            if ok and cfg.target_bytes is None and cfg.explore:
                accepted_bits = dict(bits)
            if accepted_bits is not None:
                # Within budget: while time allows, probe one bit step lower from the smallest accepted setting.
                probe = self._probe_lower(accepted_bits, bits_sens, keeps, tried)
                if probe is None:
                    break
                bits = probe
                continue
            if ok:
                break
            if cfg.target_bytes is not None and nbytes > cfg.target_bytes:
                # Over the size target (the estimate leaves out biases and headers): one bit step lower where
                # it costs least, rather than giving bits back
                lower = self._probe_lower(bits, bits_sens, keeps, tried)
                if lower is None:
                    break
                order.append(next(n for n in bits if lower[n] != bits[n]))
                bits = lower
                continue
            if not order:
                break
            # Too much lost: give back the last one or two bit reductions and fine-tune again.
            for _ in range(min(2, len(order))):
                name = order.pop()
                grid = sorted(cfg.bits)
                bits[name] = grid[min(len(grid) - 1, grid.index(bits[name]) + 1)]
        good = [c for c in candidates if c[1]["accepted"]]
        if good and cfg.drop_limit is None:  # a size budget alone: the most accurate result within it
            return max(good, key=lambda c: (c[1]["val_accuracy"], -c[1]["bytes"]))
        if good:
            return min(good, key=lambda c: c[1]["bytes"])
        return max(candidates, key=lambda c: c[1]["val_accuracy"])

    def run(self) -> tuple[nn.Module, dict[str, Any], nn.Module]:
        st = self.state
        st.setdefault("trials", [])
        if "val_baseline" not in st:
            st["val_baseline"] = self.score(self.baseline)
        if "sensitivity" in st:
            sens = SensitivityResult.from_dict(st["sensitivity"])
        else:
            self.log("sensitivity scan (one layer at a time, validation split)")
            sens = scan(self.baseline, self.score, keeps=self.cfg.keeps, bits=(), progress=self.progress)
            st["sensitivity"] = sens.to_dict()
            self._save_state()
        write_sensitivity(sens, ensure_dir(self.out / "sensitivity"), "baseline")
        pruned = self.prune_phase(sens)
        final, trial = self.bits_phase(pruned)
        st["phase"] = "done"
        st["final_trial"] = trial["n"]
        self._save_state()
        return final, trial, pruned


def _sparsity(module: nn.Module) -> float:
    w = module.weight.detach()
    return 1.0 - float((w != 0).sum()) / max(1, w.numel())


def open_state(out: Path, fingerprint: str, resume: bool) -> dict[str, Any]:
    """The saved state of an identical earlier run (to resume), else a fresh one; stale files are removed."""
    path = out / STATE
    if resume and path.exists():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read {path}: {exc}; remove it or pass --fresh") from None
        if state.get("fingerprint") == fingerprint and state.get("phase") != "done":
            return state
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out} holds an auto run with other settings or another model; "
                              "use another --out or --fresh to start over")
    for stale in (out / STATE, out / ACCEPTED):
        if stale.exists():
            os.unlink(stale)
    return {"fingerprint": fingerprint}
