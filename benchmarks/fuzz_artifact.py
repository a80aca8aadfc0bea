"""Fuzz the artifact reader (`deepshrink.load`) with a large budget; the long run behind `make fuzz`.

Three parts, all through the real file path (write bytes, `load`):
1. every truncation and every single-bit flip of each reference artifact must be rejected;
2. random inputs: byte-level damage (truncation, flips, overwrites, insertions) and tampering with
   the meta document / blobs re-sealed with a *valid* checksum, so only structural checks stand in
   the way; each must load or end in a DeepShrinkError -- anything else, a hang (per-input alarm) or a
   MemoryError (address-space cap) is a crash, saved under ``--out``;
3. SIGKILL during save, ``--kills`` times at random moments: the previous artifact must stay intact.

Bar (issue 9): >= 100,000 fuzzed inputs with zero crashes; every truncation and single-bit flip of a
reference artifact detected; 50 SIGKILLs during save with the previous artifact intact every time.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import resource
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests" / "hardening"))

import torch  # noqa: E402

import hardening_support as H  # noqa: E402
from common import command, git_rev, machine, write_result  # noqa: E402
from deepshrink.artifact import load, save  # noqa: E402
from deepshrink.codec import container  # noqa: E402
from deepshrink.models import create  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402


class Hang(Exception):
    """An input took longer than the per-input alarm."""


def _alarm(*_args: object) -> None:
    raise Hang("input exceeded the time limit")


def _cap_memory(extra_mib: int) -> int:
    """Cap the address space at current size + ``extra_mib``; returns the cap in MiB."""
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
    cap = vm + (extra_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    return cap >> 20


class Tally:
    """Outcomes per input class, and crashes grouped by exception type and location."""

    def __init__(self, crash_dir: Path, timeout_s: int) -> None:
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.crashes: collections.Counter[str] = collections.Counter()
        self.crash_dir = crash_dir
        self.timeout_s = timeout_s

    def run(self, kind: str, data: bytes, scratch: Path) -> str:
        signal.alarm(self.timeout_s)
        try:
            result = H.outcome(data, scratch)
        except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:80]}"
            if not self.crashes[key]:
                self.crash_dir.mkdir(parents=True, exist_ok=True)
                (self.crash_dir / f"crash{len(self.crashes)}.dsk").write_bytes(data)
            self.crashes[key] += 1
            result = "crash"
        finally:
            signal.alarm(0)
        self.counts[kind][result] += 1
        return result


def exhaustive(refs: dict[str, bytes], tally: Tally, scratch: Path) -> list[list[str]]:
    """Every truncation and single-bit flip of each reference; rows for the report."""
    rows = []
    for name, data in refs.items():
        trunc = sum(tally.run("truncation", data[:n], scratch) == "rejected" for n in range(len(data)))
        buf, flips = bytearray(data), 0
        for bit in range(8 * len(data)):
            buf[bit // 8] ^= 1 << (bit % 8)
            flips += tally.run("bit flip", bytes(buf), scratch) == "rejected"
            buf[bit // 8] ^= 1 << (bit % 8)
        rows.append([name, str(len(data)), f"{trunc}/{len(data)}", f"{flips}/{8 * len(data)}"])
    return rows


def kills(count: int, folder: Path, rng: random.Random) -> tuple[int, int, int]:
    """SIGKILL a child saving in a loop ``count`` times; returns (intact, interrupted writes, versions)."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(create("lenet300").eval())
    states = [m.state_dict() for m in models]
    path = folder / "kill.dsk"
    save(models[0], path, info={"v": 0})
    intact = interrupted = 0
    seen = set()
    for k in range(count):
        pid = os.fork()
        if pid == 0:  # child: save forever until killed
            torch.set_num_threads(1)
            i = 1000 * (k + 1)
            try:
                while True:
                    save(models[i % 3], path, info={"v": i})
                    i += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.002, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        temps = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        interrupted += bool(temps)
        for p in temps:
            p.unlink()
        try:
            v = container.read_container(path).meta["info"]["v"]
            state = load(path).state_dict()
            ok = all(torch.equal(state[n], states[v % 3][n]) for n in state)
            seen.add(v)
        except Exception:  # noqa: BLE001 - a damaged file is what we count
            ok = False
        intact += ok
    return intact, interrupted, len(seen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=100_000, help="random fuzzed inputs (part 2)")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-mib", type=int, default=1024, help="address space allowed above the start")
    ap.add_argument("--timeout", type=int, default=10, help="seconds per input before it counts as a hang")
    ap.add_argument("--out", default="out/bench/fuzz")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # hostile zero widths
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "input.dsk"
    rng = random.Random(args.seed)
    refs = H.reference_artifacts(out)
    tally = Tally(out / "crashes", args.timeout)
    signal.signal(signal.SIGALRM, _alarm)

    start = time.perf_counter()
    intact, interrupted, versions = kills(args.kills, out, rng)
    t_kill = time.perf_counter() - start
    cap = _cap_memory(args.mem_mib)  # after the kill phase (fork + lenet300) and before any fuzz input
    start = time.perf_counter()
    sweep_rows = exhaustive(refs, tally, scratch)
    t_sweep = time.perf_counter() - start
    start = time.perf_counter()
    names = sorted(refs)
    for i in range(args.inputs):
        kind = "resealed" if i % 2 else "raw"
        ref = refs[rng.choice(names)]
        data = H.MUTATORS[kind](ref, rng)
        while data == ref:  # e.g. a byte overwritten with its own value: not a damaged input
            data = H.MUTATORS[kind](ref, rng)
        tally.run(f"random {kind}", data, scratch)
    t_rand = time.perf_counter() - start

    total = sum(sum(c.values()) for c in tally.counts.values())
    random_total = sum(sum(tally.counts[k].values()) for k in ("random raw", "random resealed"))
    crashes = sum(tally.crashes.values())
    sweep_ok = all(r[2].split("/")[0] == r[2].split("/")[1] and r[3].split("/")[0] == r[3].split("/")[1]
                   for r in sweep_rows)
    bar = random_total >= 100_000 and crashes == 0 and sweep_ok and intact == args.kills >= 50
    rows = [[kind, str(sum(c.values())), str(c["rejected"]), str(c["loaded"]), str(c["crash"])]
            for kind, c in tally.counts.items()]
    lines = ["## Artifact reader fuzzing and kill-during-save (issue: hardening)", "",
             f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`.", "",
             f"{total:,} inputs through `deepshrink.load` ({random_total:,} random, seed {args.seed}) "
             f"under an address-space cap of {cap} MiB and a {args.timeout} s alarm per input: "
             f"**{crashes} crashes** (anything but a model or an `ArtifactError`, a hang or a MemoryError). "
             f"Sweep {t_sweep:.0f} s, random {t_rand:.0f} s. Bar met: {'yes' if bar else 'NO'}.", "",
             markdown_table(["inputs", "tried", "rejected", "loaded", "crashes"], rows), "",
             "`loaded` happens only for re-sealed tampering that leaves a structurally valid model (e.g. a "
             "flipped weight value): the checksum was recomputed, so nothing can tell it apart.", "",
             "Every truncation and every single-bit flip of each reference artifact:", "",
             markdown_table(["reference", "bytes", "truncations rejected", "bit flips rejected"], sweep_rows),
             "",
             f"SIGKILL during `save` of LeNet-300-100 (1 MiB) at random moments: {intact}/{args.kills} times "
             f"the previous artifact was intact and loaded to the exact weights of its version; "
             f"{interrupted} kills landed inside a write (left a temp file), {versions} distinct versions "
             f"seen, {t_kill:.0f} s.", ""]
    if tally.crashes:
        lines += ["Crashes (inputs saved under " + str(out / "crashes") + "):", ""]
        lines += [f"- {n} x {key}" for key, n in tally.crashes.most_common()] + [""]
    path = write_result("fuzz", "\n".join(lines))
    print(f"wrote {path}: {total} inputs, {crashes} crashes, kills intact {intact}/{args.kills}")
    sys.exit(0 if bar or args.inputs < 100_000 else 1)


if __name__ == "__main__":
    main()
