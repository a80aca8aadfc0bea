"""Quantization on LeNet-5 (mnist5k) and the MNIST-1D CNN: accuracy over seeds, int8 latency, artifact bytes.

Bars (issue 4): 8-bit per-channel PTQ <= 0.3 pt drop, 4-bit per-channel QAT <= 0.5 pt (means over seeds);
real int8 >= 2x faster than fp32 at batch 64 with 2 threads; artifact int8 <= 26% and 4-bit <= 14% of fp32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, git_rev, machine, mean_std, write_result  # noqa: E402

import deepshrink.quantize as Q  # noqa: E402
from deepshrink.artifact.model_io import load as load_artifact, save  # noqa: E402
from deepshrink.artifact.quantized import save_quantized  # noqa: E402
from deepshrink.data import load as load_data  # noqa: E402
from deepshrink.measure import compare_latency, evaluate  # noqa: E402
from deepshrink.models import create  # noqa: E402
from deepshrink.quantize.backends import to_int8  # noqa: E402
from deepshrink.quantize.backends.onnxruntime import cpu_has_vnni  # noqa: E402
from deepshrink.report.tables import markdown_table  # noqa: E402
from deepshrink.train import TrainConfig, Trainer  # noqa: E402

SETUPS = {
    "lenet5": ("mnist5k", TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine"),
               {"conv_relu": True}),
    "cnn1d": ("mnist1d", TrainConfig(epochs=60, batch_size=100, optimizer="adam", lr=1e-2, schedule="cosine"), {}),
}
QAT_EPOCHS = 3
OBSERVERS = ["minmax", "moving_average", "percentile", "mse", "entropy"]


QAT_EPOCHS_BY_MODEL = {"cnn1d": 10}  # the 5K-parameter CNN needs longer 4-bit QAT to recover (measured)


def schemes(model: str = "lenet5") -> dict[str, tuple[Q.QuantConfig, int]]:
    """name -> (config, QAT epochs; 0 = post-training only)."""
    qat_epochs = max(QAT_EPOCHS, QAT_EPOCHS_BY_MODEL.get(model, 0))
    return {
        "int8 PTQ per-channel (w+a)": (Q.Int8StaticConfig(), 0),
        "int8 PTQ per-tensor (w+a)": (Q.Int8StaticConfig(granularity="per_tensor"), 0),
        **{f"int8 PTQ observer={o}": (Q.Int8StaticConfig(observer=o), 0) for o in OBSERVERS[1:]},
        "int8 dynamic": (Q.Int8DynamicConfig(), 0),
        "4-bit PTQ per-channel (w)": (Q.IntWeightConfig(bits=4), 0),
        "4-bit PTQ per-tensor (w)": (Q.IntWeightConfig(bits=4, granularity="per_tensor"), 0),
        "4-bit QAT per-channel (w)": (Q.QATConfig(weight_bits=4), qat_epochs),
        "4-bit pow2 PTQ (w)": (Q.PowerOfTwoConfig(bits=4), 0),
        "4-bit k-means PTQ (w)": (Q.KMeansConfig(bits=4), 0),
        "2-bit PTQ per-channel (w)": (Q.IntWeightConfig(bits=2), 0),
        "2-bit QAT LSQ (w)": (Q.QATConfig(weight_bits=2, lsq=True), qat_epochs),
        "ternary PTQ (w)": (Q.TernaryConfig(), 0),
        "binary PTQ (w)": (Q.BinaryConfig(), 0),
    }


def run_model(name: str, seeds: int, log: list[str]) -> tuple[dict[str, list[float]], torch.nn.Module, object]:
    dataset, base_cfg, kwargs = SETUPS[name]
    data = load_data(dataset)
    calib = torch.utils.data.Subset(data.train, range(512))
    accs: dict[str, list[float]] = {}
    model = None
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = create(name, **kwargs)
        start = time.perf_counter()
        Trainer(model, base_cfg.replace(seed=seed), progress=False, device="cpu").fit(data.train)
        model.eval()
        accs.setdefault("fp32", []).append(100 * evaluate(model, data.test).accuracy)
        for label, (cfg, qat_epochs) in schemes(name).items():
            q = Q.quantize(model, cfg, calib)
            if qat_epochs:
                ft = base_cfg.replace(epochs=qat_epochs, lr=base_cfg.lr / 10, seed=seed)
                Trainer(q, ft, progress=False, device="cpu").fit(data.train)
            accs.setdefault(label, []).append(100 * evaluate(q.eval(), data.test).accuracy)
            print(f"  {name} seed {seed} {label}: {accs[label][-1]:.2f} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
        real = to_int8(model, calib)
        accs.setdefault(f"int8 real kernels ({real.method})", []).append(100 * evaluate(real.model, data.test).accuracy)
        ort_int8 = to_int8(model, calib, backend="onnxruntime", threads=1)
        accs.setdefault("int8 real kernels (onnxruntime QDQ)", []).append(
            100 * evaluate(ort_int8.model, data.test).accuracy)
        log.append(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s")
    return accs, model, data


def accuracy_table(name: str, accs: dict[str, list[float]]) -> list[str]:
    base, _ = mean_std(accs["fp32"])
    rows = []
    for label, vals in accs.items():
        m, sd = mean_std(vals)
        bar = ""
        if label.startswith("int8 PTQ per-channel"):
            bar = "<= 0.3: " + ("yes" if base - m <= 0.3 else "NO")
        elif label.startswith("4-bit QAT"):
            bar = "<= 0.5: " + ("yes" if base - m <= 0.5 else "NO")
        rows.append([label, f"{m:.2f} +- {sd:.2f}", f"{base - m:+.2f}" if label != "fp32" else "-", bar])
    return [f"### {name}: test accuracy %, mean +- std over {len(accs['fp32'])} seeds", "",
            markdown_table(["scheme", "accuracy %", "drop (pt)", "bar"], rows), ""]


class _Engine:
    """Call a torch quantized model with a given quantized engine (fbgemm / onednn / x86) selected."""

    def __init__(self, model: torch.nn.Module, engine: str) -> None:
        self.model, self.engine = model, engine

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        old = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            return self.model(x)
        finally:
            torch.backends.quantized.engine = old


def latency_rows(label: str, model: torch.nn.Module, example: torch.Tensor, calib: torch.Tensor, test: object,
                 threads: int, rounds: int) -> tuple[list[list[str]], list[str]]:
    """Interleaved latency of fp32 (PyTorch and ORT) and every int8 path; rows and a per-node ORT profile."""
    from deepshrink.quantize.backends.onnxruntime import profile_nodes, to_onnxruntime

    static = to_int8(model, calib)
    # No spinning: an ORT pool that spins after its call would steal the cores from the next candidate.
    ort_fp32, _ = to_onnxruntime(model, calib, mode="float", threads=threads, spin=False)
    ort_int8 = to_int8(model, calib, backend="onnxruntime", threads=threads, spin=False)
    cands: dict[str, object] = {"PyTorch fp32": model, f"PyTorch int8 static ({static.method}, x86)": static.model,
                                f"PyTorch int8 static ({static.method}, onednn)": _Engine(
                                    to_int8(model, calib, engine="onednn").model, "onednn"),
                                "ORT fp32": ort_fp32, "ORT int8 static QDQ": ort_int8.model}
    if ort_int8.fallbacks:
        cands["ORT int8 static QDQ, every layer int8"] = to_int8(model, calib, backend="onnxruntime", threads=threads,
                                                                 float_layers=(), spin=False).model
    if label != "lenet5":
        cands["PyTorch int8 dynamic"] = to_int8(model, mode="dynamic").model
        cands["ORT int8 dynamic"] = to_int8(model, calib, backend="onnxruntime", mode="dynamic",
                                            threads=threads, spin=False).model
    cands["PyTorch fp32 compiled (Inductor, freezing)"] = _compiled_fp32(model, example, threads)
    cands["PyTorch int8 static (pt2e, Inductor)"] = to_int8(model, calib, backend="inductor", threads=threads,
                                                            batch_size=len(example)).model
    res = compare_latency(cands, example, rounds=rounds, warmup=max(5, rounds // 10), threads=threads, block=5)
    torch_base, ort_base = res["PyTorch fp32"].median_ms, res["ORT fp32"].median_ms
    rows = []
    for k, v in res.items():
        fn = cands[k]
        acc = 100 * evaluate(fn, test).accuracy if isinstance(fn, torch.nn.Module) else float("nan")
        rows.append([label, k, f"{v.median_ms:.3f}", f"{v.p10_ms:.3f}-{v.p90_ms:.3f}",
                     f"{torch_base / v.median_ms:.2f}x", f"{ort_base / v.median_ms:.2f}x",
                     "-" if acc != acc else f"{acc:.2f}"])
    prof = []
    for name, mod in (("ORT fp32", ort_fp32), ("ORT int8 static QDQ", ort_int8.model)):
        nodes = profile_nodes(mod, example, runs=rounds)
        total = sum(t for _, _, t in nodes)
        prof.append(f"- {label}, {name}: sum of per-node minima {total / 1000:.3f} ms; "
                    + ", ".join(f"{op} `{node}` {t / 1000:.3f}" for node, op, t in nodes[:6]))
    return rows, prof


def _compiled_fp32(model: torch.nn.Module, example: torch.Tensor, threads: int) -> object:
    """The float model through the same compiler (Inductor with freezing): what int8 is gaining over, alone.
    Compiled at ``threads`` (Inductor fixes the OpenMP thread count of its kernels when it generates them)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(copy.deepcopy(model).eval())
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with inductor_config.patch(freezing=True), torch.inference_mode():
            compiled(example)
    finally:
        torch.set_num_threads(old)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # the grad mode it was compiled in: no recompilation without freezing
            return compiled(x)

    return run


def cpu_time_rows(label: str, model: torch.nn.Module, example: torch.Tensor, calib: torch.Tensor,
                  rounds: int) -> list[list[str]]:
    """Process CPU time per batch at 1 thread (ORT without spinning): unlike wall time it barely moves when
    other processes compete for the cores, so it is the figure to trust on a busy machine."""
    from deepshrink.quantize.backends.onnxruntime import to_onnxruntime

    cands: dict[str, object] = {
        "PyTorch fp32": model, "PyTorch int8 static (x86)": to_int8(model, calib).model,
        "ORT fp32": to_onnxruntime(model, calib, mode="float", threads=1, spin=False)[0],
        "ORT int8 static QDQ": to_int8(model, calib, backend="onnxruntime", threads=1, spin=False).model}
    if label != "lenet5":
        cands["ORT int8 dynamic"] = to_int8(model, calib, backend="onnxruntime", mode="dynamic", threads=1,
                                            spin=False).model
    times: dict[str, list[float]] = {k: [] for k in cands}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for fn in cands.values():
                for _ in range(5):
                    fn(example)  # type: ignore[operator]
            for _ in range(max(3, rounds // 10)):
                for k, fn in cands.items():
                    t = time.process_time()
                    for _ in range(10):
                        fn(example)  # type: ignore[operator]
                    times[k].append((time.process_time() - t) / 10 * 1000)
    finally:
        torch.set_num_threads(old)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [[label, k, f"{v:.3f}", f"{med['PyTorch fp32'] / v:.2f}x", f"{med['ORT fp32'] / v:.2f}x"]
            for k, v in med.items()]


def latency_part(models: dict[str, tuple[torch.nn.Module, object]], threads: int, rounds: int,
                 log: list[str]) -> list[str]:
    """Latency of fp32 vs int8 at batch 64 on LeNet-5 and LeNet-300-100, both runtimes, with a profile."""
    rows: list[list[str]] = []
    cpu_rows: list[list[str]] = []
    prof: list[str] = []
    for name, label in LATENCY_MODELS:
        model, data = models[name]
        start = time.perf_counter()
        r, p = latency_rows(label, model.eval(), data.test.tensors[0][:64], data.train.tensors[0][:512], data.test,
                            threads, rounds)
        rows += r
        prof += p
        cpu_rows += cpu_time_rows(label, model.eval(), data.test.tensors[0][:64], data.train.tensors[0][:512], rounds)
        log.append(f"latency {name}: {time.perf_counter() - start:.0f} s")
    return ["### Latency at batch 64, " + f"{threads} threads (median ms; all candidates interleaved round-robin in "
            f"one run, {rounds} rounds)", "",
            "`ORT` = ONNX Runtime (CPU EP, intra_op_num_threads = threads, spinning off; each round times 5 consecutive calls per candidate after one settling call). `ORT int8 static "
            "QDQ`: `backend=\"onnxruntime\"` defaults (min-max calibration on 512 training images, per-channel "
            "7-bit weights on a CPU without VNNI, convolutions with K < 32 kept fp32). `pt2e, Inductor`: "
            "`backend=\"inductor\"` (torch.export, torchao's X86InductorQuantizer with 7-bit activations on a CPU "
            "without VNNI, Inductor with weight freezing: oneDNN int8 convolution/linear kernels fused with ReLU; "
            "compiled for batch 64); the float model through the same compiler is listed beside it. "
            "Accuracy: mnist5k test set.",
            "", markdown_table(["model", "variant", "median ms", "p10-p90", "vs PyTorch fp32", "vs ORT fp32",
                                "test acc %"], rows), "", *_int8_verdicts(rows), "",
            "ORT per-node kernel time (minimum over the rounds, ms; slowest first):", "", *prof, "",
            "### CPU time per batch of 64 at 1 thread (median of blocks of 10 calls; robust to a busy machine)", "",
            markdown_table(["model", "variant", "CPU ms", "vs PyTorch fp32", "vs ORT fp32"], cpu_rows), ""]


def _int8_verdicts(rows: list[list[str]]) -> list[str]:
    """Per model: the fastest int8 variant against PyTorch fp32 (bar: >= 2x)."""
    out = []
    for label in dict.fromkeys(r[0] for r in rows):
        int8 = [r for r in rows if r[0] == label and "int8" in r[1]]
        best = max(int8, key=lambda r: float(r[4].rstrip("x")))
        speed = float(best[4].rstrip("x"))
        out.append(f"- {label}: fastest int8 = {best[1]}, {best[4]} vs PyTorch fp32 (bar >= 2x: "
                   f"{'yes' if speed >= 2 else 'NO'}); vs ORT fp32 {best[5]}")
    return out


# (key, label); the 3x2048 MLP is BinaryConnect's (the MLP the issue names), LeNet-300-100 the small one
LATENCY_MODELS = (("lenet5", "lenet5"), ("lenet300", "lenet300 (MLP 784-300-100-10)"),
                  ("mlp2048", "MLP 784-2048-2048-2048-10 (BinaryConnect's)"))
_LATENCY_ARCH = {"lenet5": ("lenet5", {"conv_relu": True}), "lenet300": ("lenet300", {}),
                 "mlp2048": ("mlp", {"hidden": (2048, 2048, 2048)})}


def train_latency_models(epochs: int) -> dict[str, tuple[torch.nn.Module, object]]:
    """LeNet-5 (conv ReLU), LeNet-300-100 and the 3x2048 MLP trained on mnist5k for the latency part."""
    mnist = load_data("mnist5k")
    out = {}
    for name, (arch, kw) in _LATENCY_ARCH.items():
        torch.manual_seed(0)
        m = create(arch, **kw)
        Trainer(m, TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=1e-3), progress=False,
                device="cpu").fit(mnist.train)
        out[name] = (m.eval(), mnist)
    return out


def binary_part(seeds: int, hidden: int, epochs: int, qat_epochs: int, log: list[str]) -> list[str]:
    """BinaryConnect-style row: an MLP 784-h-h-10 on mnist5k, fp32 vs 2-bit / ternary / binary, PTQ and QAT."""
    data = load_data("mnist5k")
    base_cfg = TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")
    variants = {
        "2-bit PTQ per-channel": (Q.IntWeightConfig(bits=2), 0),
        "2-bit QAT LSQ": (Q.QATConfig(weight_bits=2, lsq=True), qat_epochs),
        "ternary PTQ (TWN)": (Q.TernaryConfig(), 0),
        "ternary QAT (TWN, STE)": (Q.TernaryConfig(trainable=True), qat_epochs),
        "binary PTQ": (Q.BinaryConfig(), 0),
        "binary QAT (BinaryConnect STE, XNOR scale)": (Q.BinaryConfig(trainable=True), qat_epochs),
    }
    accs: dict[str, list[float]] = {}
    for seed in range(seeds):
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = create("mlp", hidden=(hidden, hidden))
        Trainer(model, base_cfg.replace(seed=seed), progress=False, device="cpu").fit(data.train)
        accs.setdefault("fp32", []).append(100 * evaluate(model.eval(), data.test).accuracy)
        for label, (cfg, ep) in variants.items():
            q = Q.quantize(model, cfg)
            if ep:
                Trainer(q, base_cfg.replace(epochs=ep, lr=1e-3, seed=seed), progress=False, device="cpu").fit(data.train)
                Q.freeze(q)
            accs.setdefault(label, []).append(100 * evaluate(q.eval(), data.test).accuracy)
            print(f"  mlp seed {seed} {label}: {accs[label][-1]:.2f} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
        log.append(f"binary MLP seed {seed}: {time.perf_counter() - start:.0f} s")
    base, _ = mean_std(accs["fp32"])
    rows = []
    for label, vals in accs.items():
        m, sd = mean_std(vals)
        rows.append([label, f"{m:.2f} +- {sd:.2f}", f"{100 - m:.2f}", "-" if label == "fp32" else f"{base - m:+.2f}"])
    return [f"### Binary / ternary / 2-bit weights: MLP 784-{hidden}-{hidden}-10 on mnist5k, {seeds} seed(s)", "",
            f"Deviation from BinaryConnect (3x2048 MLP, full 60K MNIST, 1.29% test error deterministic): a "
            f"{hidden}-wide, 2-hidden-layer MLP on the 5K-image mnist5k subset so that a seed fits in minutes on this "
            f"2-core machine; errors are therefore not comparable in level, only in the order of the schemes. "
            f"fp32: Adam 1e-3, cosine, {epochs} epochs; QAT: {qat_epochs} epochs from the fp32 weights, Adam 1e-3, "
            "then `freeze` (integer codes; eval outputs unchanged). QAT rows get those extra epochs of training "
            "that fp32 does not, so a QAT row above fp32 is extra training, not a gain from quantization. All "
            "weight layers quantized (first and last included).", "",
            markdown_table(["scheme", "accuracy %", "error %", "drop (pt)"], rows), ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="accuracy,latency,binary",
                    help="comma list of accuracy (with artifact sizes), latency, binary, sizes (artifact bytes "
                         "only: baselines trained at the last seed, no quantization accuracy runs)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lenet-epochs", type=int, default=10)
    ap.add_argument("--lenet-batch", type=int, default=64)
    ap.add_argument("--lenet-lr", type=float, default=1e-3)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--cnn1d-epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2, help="latency threads (torch and ORT)")
    ap.add_argument("--rounds", type=int, default=200, help="latency rounds per candidate")
    ap.add_argument("--latency-epochs", type=int, default=3, help="training epochs of the latency models")
    ap.add_argument("--binary-hidden", type=int, default=1024)
    ap.add_argument("--binary-epochs", type=int, default=10)
    ap.add_argument("--binary-qat-epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 epoch, 1 seed: a smoke run, not results")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"accuracy", "latency", "binary", "sizes"}
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    name, (ds, cfg, kw) = "lenet5", SETUPS["lenet5"]
    SETUPS[name] = (ds, cfg.replace(epochs=args.lenet_epochs, batch_size=args.lenet_batch, lr=args.lenet_lr), kw)
    ds, cfg, kw = SETUPS["cnn1d"]
    SETUPS["cnn1d"] = (ds, cfg.replace(epochs=args.cnn1d_epochs), kw)
    # One thread for training and evaluation: on a shared 2-core machine two OpenMP threads per process
    # oversubscribe the cores and small ops slow down ~7x. Latency is timed with threads=2 explicitly.
    torch.set_num_threads(1)
    global QAT_EPOCHS
    QAT_EPOCHS = args.qat_epochs
    if args.quick:
        args.seeds = 1
        args.rounds = min(args.rounds, 20)
        args.latency_epochs = args.binary_epochs = args.binary_qat_epochs = 1
        args.binary_hidden = min(args.binary_hidden, 256)
        for key, (ds, cfg, kw) in list(SETUPS.items()):
            SETUPS[key] = (ds, cfg.replace(epochs=1), kw)
    header = [f"Machine: {machine()}. Commit {git_rev()}. Command: `{command()}`.", ""]
    written = []
    if "accuracy" in parts:
        written.append(accuracy_part(args, header))
    if "sizes" in parts:
        written.append(sizes_only_part(args, header))
    if "latency" in parts:
        log: list[str] = []
        models = train_latency_models(args.latency_epochs)
        lines = ["## Quantization: real int8 latency (issue 4)", "", *header,
                 f"Models trained here for {args.latency_epochs} epochs (Adam 1e-3, batch 64, seed 0) on mnist5k. "
                 "CPU flags: " + ("AVX-512/AVX VNNI present" if cpu_has_vnni() else
                                  "AVX2 without VNNI (no int8 dot-product instruction)") + ".", "",
                 *latency_part(models, args.threads, args.rounds, log), "Run times: " + "; ".join(log) + ".", ""]
        written.append(write_result("quantization_latency", "\n".join(lines)))
    if "binary" in parts:
        log = []
        lines = ["## Quantization: binary and ternary training (issue 4)", "", *header,
                 *binary_part(args.seeds, args.binary_hidden, args.binary_epochs, args.binary_qat_epochs, log),
                 "Run times: " + "; ".join(log) + ".", ""]
        written.append(write_result("quantization_binary", "\n".join(lines)))
    for path in written:
        print(f"wrote {path}")


def accuracy_part(args: argparse.Namespace, header: list[str]) -> Path:
    """Accuracy over seeds for every scheme on LeNet-5 and cnn1d, and artifact bytes; quantization.md."""
    log: list[str] = []
    lines = ["## Quantization (issue 4)", "", *header,
             f"Baselines trained in this script (LeNet-5 with ReLU after the convolutions: Adam "
             f"{SETUPS['lenet5'][1].lr:g}, batch {SETUPS['lenet5'][1].batch_size}, {SETUPS['lenet5'][1].epochs} epochs; "
             f"cnn1d: Adam 1e-2, batch 100, {SETUPS['cnn1d'][1].epochs} epochs). QAT epochs: LeNet-5 {QAT_EPOCHS}, "
             f"cnn1d {max(QAT_EPOCHS, QAT_EPOCHS_BY_MODEL['cnn1d'])}. Training and evaluation run at 1 thread (two "
             "OpenMP threads per process oversubscribe this shared 2-core machine). "
             "Calibration: the first 512 training images. "
             "`(w)` = weights only, `(w+a)` = weights and the input of every Linear/Conv, fake-quantized in "
             "float; `int8 real kernels` = torch x86 quantized Linear/Conv kernels or ONNX Runtime's (QDQ). QAT "
             "fine-tunes with the baseline optimizer at lr/10. Latency: quantization_latency.md; binary/ternary "
             "training: quantization_binary.md.", ""]
    models = {}
    for name in SETUPS:
        accs, model, data = run_model(name, args.seeds, log)
        lines += accuracy_table(name, accs)
        models[name] = (model, data)
    lines += size_part(models)
    lines += ["Run times: " + "; ".join(log) + ".", ""]
    return write_result("quantization", "\n".join(lines))


def size_part(models: dict[str, tuple[torch.nn.Module, object]]) -> list[str]:
    """Artifact bytes of weights-only quantized models against the fp32 artifact, and whether the loaded
    artifact's outputs equal the in-memory quantized model's on 64 test inputs (torch.equal)."""
    size_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, data) in models.items():
            fp32 = save(model, Path(tmp) / "f.dsk").nbytes
            x = torch.stack([data.test[i][0] for i in range(64)])
            for label, cfg, bar in [("int8", Q.IntWeightConfig(bits=8), 26.0), ("4-bit", Q.IntWeightConfig(bits=4), 14.0),
                                    ("2-bit", Q.IntWeightConfig(bits=2), None), ("ternary", Q.TernaryConfig(), None),
                                    ("binary", Q.BinaryConfig(), None)]:
                q = Q.quantize(model, cfg).eval()
                rep = save_quantized(q, Path(tmp) / "q.dsk")
                with torch.no_grad():
                    exact = torch.equal(load_artifact(Path(tmp) / "q.dsk")(x), q(x))
                codes = sum(s.nbytes for t in rep.tensors if t.encoding == "quant" for k, s in t.streams.items())
                pct = 100 * rep.nbytes / fp32
                ok = "-" if bar is None else (f"<= {bar:.0f}%: " + ("yes" if pct <= bar else "NO"))
                size_rows.append([name, label, f"{fp32:,}", f"{rep.nbytes:,}", f"{codes:,}",
                                  f"{rep.nbytes - codes:,}", f"{pct:.1f}%", "yes" if exact else "NO", ok])
    return ["### Artifact bytes (whole file: header, metadata, codes, scales, biases; every stream lossless)", "",
            "Codes: bit-packed, Huffman- or range-coded per layer, whichever is smallest. Other: header (56), "
            "compressed metadata, scales (float16-precision, bit-packed), biases (float32, bit-packed). "
            "`exact load`: the loaded artifact's outputs equal the in-memory quantized model's (torch.equal). "
            "Published reference (../shared/REFERENCES.md): an ONNX Runtime dynamic-int8 file is 26% of fp32 "
            "(sentence-transformers' table); Deep Compression: Huffman saves 20-30% on top of pruning + "
            "quantization.", "",
            markdown_table(["model", "weights", "fp32 bytes", "quantized bytes", "codes bytes", "other bytes",
                            "% of fp32", "exact load", "bar"], size_rows), ""]


def sizes_only_part(args: argparse.Namespace, header: list[str]) -> Path:
    """Artifact bytes alone: each baseline trained once, at the seed whose model the accuracy part sizes."""
    seed = args.seeds - 1
    models, log = {}, []
    for name, (dataset, cfg, kwargs) in SETUPS.items():
        start = time.perf_counter()
        data = load_data(dataset)
        torch.manual_seed(seed)
        model = create(name, **kwargs)
        Trainer(model, cfg.replace(seed=seed), progress=False, device="cpu").fit(data.train)
        models[name] = (model.eval(), data)
        log.append(f"{name} {time.perf_counter() - start:.0f} s")
    lines = ["## Quantization: artifact bytes (issue 4)", "", *header,
             f"Baselines trained here at seed {seed} (the model the accuracy part sizes), with the recipes of "
             "quantization.md.", "", *size_part(models), "Run times: " + "; ".join(log) + ".", ""]
    return write_result("quantization_sizes", "\n".join(lines))


if __name__ == "__main__":
    main()
