"""split_depthwise / split_spatial: conv MACs against test accuracy on the VGG-style digits net,
exactness at full size on the sample models, and onnxruntime latency on the builder ResNet-50.

    .venv/bin/python bench/bench_split.py                 # everything (~10 min on 2 shared cores)
    .venv/bin/python bench/bench_split.py --parts digits  # one part: exact, digits, resnet

Prints the tables and writes bench/RESULTS_split.md. The passes fit on
sample_models/digits_calib.npz (as `data`); accuracy is measured on
sample_models/digits_test.npz, which the fit never sees.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS thread pool thrashes when other jobs share the two cores (a 8192x100 Gram
# matrix took 25x longer with 2 threads than with 1 here); onnxruntime is timed single-threaded too.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

from edgeopt.passes import PassContext, get_pass  # noqa: E402
from edgeopt.profile import measure_latency, profile_model  # noqa: E402
from edgeopt.verify.runtime import make_session, run_batched  # noqa: E402

SAMPLES = REPO / "sample_models"
SHAPE = {"input": [1, 1, 32, 32]}


def load_npz(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(SAMPLES / name) as npz:
        return {"input": npz["input"].astype(np.float32)}, npz["labels"].astype(np.int64)


def conv_macs(model: onnx.ModelProto, shapes=SHAPE) -> int:
    return sum(layer["macs"] or 0 for layer in profile_model(model, None, shapes).layers if layer["op_type"] == "Conv")


def outputs(model: onnx.ModelProto, feeds) -> np.ndarray:
    return run_batched(make_session(model), model, feeds)[0]


def accuracy(model: onnx.ModelProto, feeds, labels) -> float:
    return float(np.mean(np.argmax(outputs(model, feeds), axis=1) == labels))


def apply(name: str, model: onnx.ModelProto, ctx: PassContext, **params):
    cls = get_pass(name)
    started = time.perf_counter()
    result = cls().apply(model, cls.Params(**params), ctx)
    return result, time.perf_counter() - started


def fold(model: onnx.ModelProto, shapes=SHAPE) -> onnx.ModelProto:
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model
    return apply("fold_batchnorm", model, PassContext(input_shapes=shapes))[0].model


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def digits_tradeoff(out: list[str]) -> None:
    model = fold(onnx.load(SAMPLES / "vgg_digits.onnx"))
    calib, _ = load_npz("digits_calib.npz")
    test, labels = load_npz("digits_test.npz")
    base_macs, base_acc = conv_macs(model), accuracy(model, test, labels)
    with_data = PassContext(data=calib, input_shapes=SHAPE, seed=0)
    weights_only = PassContext(input_shapes=SHAPE, seed=0)
    settings = []
    for name in ("split_depthwise", "split_spatial"):
        for budget in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
            settings.append((name, f"auto, max_error {budget}, data", with_data, {"max_error": budget}))
        if name == "split_depthwise":
            for m in (1, 2, 3, 4):
                settings.append((name, f"m={m}, data", with_data,
                                 {"depth_multiplier": m, "max_error": 100.0, "min_macs_saving": 0.0}))
        for budget in (0.3, 0.5, 0.7):
            settings.append((name, f"auto, max_error {budget}, weights only", weights_only, {"max_error": budget}))
    rows, best, models = [], {}, {}
    for name, label, ctx, params in settings:
        result, seconds = apply(name, model, ctx, **params)
        models[(name, label)] = result.model
        macs, acc = conv_macs(result.model), accuracy(result.model, test, labels)
        split = [n for n in result.notes if n.action == "split"]
        sizes = ",".join(str(n.figures.get("depth_multiplier", n.figures.get("rank"))) for n in split)
        ratio = base_macs / macs
        drop = (base_acc - acc) * 100
        rows.append([name, label, f"{len(split)}/{len(result.notes)}", sizes or "-", f"{macs / 1e6:.2f}",
                     f"{ratio:.2f}x", f"{acc * 100:.2f}", f"{drop:+.2f}", f"{seconds:.1f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        if drop <= 2.0 and ratio > best.get(name, (0,))[0]:
            best[name] = (ratio, label, acc, drop)
    out.append("### VGG-style digits net: conv MACs vs test accuracy\n")
    out.append(f"sample_models/vgg_digits.onnx (BN folded), input 1x1x32x32: conv MACs {base_macs / 1e6:.2f} M, "
               f"test accuracy {base_acc * 100:.2f} % on {len(labels)} digits_test images. Fits use "
               "digits_calib.npz; `sizes` lists the chosen m or r of each split layer in graph order.\n")
    out.append(table(["pass", "setting", "layers split", "sizes", "conv MMACs", "fewer conv MACs",
                      "test acc %", "drop (points)", "pass s"], rows))
    out.append("")
    for name, (ratio, label, acc, drop) in sorted(best.items()):
        out.append(f"- best {name} within 2 points: **{label}**: {ratio:.2f}x fewer conv MACs, "
                   f"accuracy {acc * 100:.2f} % ({drop:+.2f} points)")
    out.append("")
    # Latency of those best settings against the unsplit net, batch 1, interleaved rounds.
    variants = [("unsplit (BN folded)", model)] + [(f"{name}, {label}", models[(name, label)])
                                                   for name, (_, label, _, _) in sorted(best.items())]
    one = {"input": test["input"][:1]}
    sessions = [make_session(m) for _, m in variants]
    times: list[list[float]] = [[] for _ in variants]
    for _ in range(5):
        for i, session in enumerate(sessions):
            times[i].append(measure_latency(session, one, max_seconds=1.0))
    base = statistics.median(times[0])
    out.append("Measured latency of those settings, batch 1, onnxruntime CPU, 1 thread, CPU clock, median of 5 "
               "interleaved 1-second rounds (the last column is latency divided by the unsplit net's):\n")
    out.append(table(["model", "conv MMACs", "latency ms", "latency vs unsplit"],
                     [[label, f"{conv_macs(m) / 1e6:.2f}", f"{statistics.median(t):.3f}",
                       f"{statistics.median(t) / base:.2f}x"] for (label, m), t in zip(variants, times)]))
    out.append("")


def exactness(out: list[str]) -> None:
    test, _ = load_npz("digits_test.npz")
    rows = []
    for stem in ("vgg_digits", "resnet_digits", "mobilenet_digits"):
        model = fold(onnx.load(SAMPLES / f"{stem}.onnx"))
        ref = outputs(model, test)
        for name, size in (("split_depthwise", "depth_multiplier"), ("split_spatial", "rank")):
            result, _ = apply(name, model, PassContext(input_shapes=SHAPE), **{size: 10 ** 6, "min_macs_saving": -100.0})
            got = outputs(result.model, test)
            scale = max(1.0, float(np.abs(ref).max()))
            split = sum(n.action == "split" for n in result.notes)
            rows.append([stem, name, split, f"{np.abs(got - ref).max():.2e}", f"{np.abs(got - ref).max() / scale:.2e}"])
    out.append("### Exactness at full size (m = min(O, K*K), r = min(C*KH, O*KW))\n")
    out.append(table(["model", "pass", "layers split", "max abs error (logits)", "relative to output scale"], rows))
    out.append("")


def resnet_latency(out: list[str], budget: float = 0.7) -> None:
    from edgeopt.zoo import build_resnet50

    shapes = {"input": [1, 3, 224, 224]}
    model = fold(build_resnet50(), shapes)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    ref = outputs(model, feeds)

    variants = [("ResNet-50 (BN folded)", model, None)]
    for name in ("split_depthwise", "split_spatial"):
        result, seconds = apply(name, model, PassContext(input_shapes=shapes), max_error=budget)
        print(f"{name}: {result.summary} ({seconds:.0f} s)", flush=True)
        variants.append((f"{name} (max_error {budget}, weights)", result.model, result))
    # Interleaved rounds (A B C A B C ...) so drift in the machine's load hits every model alike;
    # each figure is a median over rounds of a time-budgeted median (1 ORT thread, CPU clock).
    sessions = [make_session(m) for _, m, _ in variants]
    rounds: list[list[float]] = [[] for _ in variants]
    for _ in range(5):
        for i, session in enumerate(sessions):
            rounds[i].append(measure_latency(session, feeds, max_seconds=3.0, min_runs=3))
    base_ms, base_macs = statistics.median(rounds[0]), profile_model(model, None, shapes).totals["macs"]
    rows = []
    for (label, m, result), times in zip(variants, rounds):
        ms, macs = statistics.median(times), profile_model(m, None, shapes).totals["macs"]
        got = outputs(m, feeds)
        cos = float(np.dot(got.ravel(), ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref)))
        split = "-" if result is None else f"{sum(n.action == 'split' for n in result.notes)} of 53"
        rows.append([label, split, f"{macs / 1e9:.3f}", f"{base_macs / macs:.2f}x", f"{ms:.1f}",
                     f"{min(times):.1f}-{max(times):.1f}", f"{base_ms / ms:.2f}x", f"{cos:.3f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    out.append("### Builder ResNet-50 (random weights): MACs and measured onnxruntime latency\n")
    out.append("Input 1x3x224x224, onnxruntime CPU (full graph optimizations), 1 intra-op thread, CPU clock; "
               "median of 5 interleaved rounds, each the median of a 3-second series. "
               "Random weights have flat singular spectra, so a weights-only budget splits few layers "
               "(most 3x3 layers need m or r near full to stay under it); the budget here is loose on purpose "
               "to compare MACs with latency, and the cosine (logits vs unsplit, one random input) shows "
               "what that costs on random weights.\n")
    out.append(table(["model", "convs split", "GMACs", "fewer MACs", "latency ms (median)", "range over rounds",
                      "speed-up", "cosine"], rows))
    out.append("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="exact,digits,resnet",
                        help="comma-separated parts to run: exact, digits, resnet (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    out = ["## split_depthwise / split_spatial (issue 6)\n", f"Machine: {describe()}\n",
           f"Command: `.venv/bin/python bench/bench_split.py{'' if len(parts) == 3 else ' --parts ' + args.parts}`\n"]
    for part, run in (("exact", exactness), ("digits", digits_tradeoff), ("resnet", resnet_latency)):
        if part in parts:
            run(out)
    text = "\n".join(out)
    print(text)
    (HERE / "RESULTS_split.md").write_text(text + "\n")
    print(f"wrote {HERE / 'RESULTS_split.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
