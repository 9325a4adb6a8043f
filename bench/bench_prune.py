"""Channel pruning acceptance bench: structure, MACs and latency on the builder nets; accuracy on digits.

    .venv/bin/python bench/bench_prune.py [--only structure,latency,digits,sensitivity,sparsify]

Sections:
- structure: ResNet-50 and MobileNetV2 (builder, 224x224) pruned 30 % with round_to 8: channels removed,
  channel counts that are not multiples of 8, residual groups pruned, MACs by the pass vs the profiler.
- latency: builder ResNet-50 at several ratios: onnxruntime latency ratio next to the MACs ratio
  (median of single-thread CPU-time runs, edgeopt.profile.measure_latency).
- digits: the trained digits nets at 2x fewer MACs: test accuracy with l1, l2, bn_scale, apoz, thinet,
  each with and without least-squares reconstruction (calibration: digits_calib.npz, test: digits_test.npz).
- sensitivity: the scan's proposal for the ResNet-style digits net within 1 and 2 accuracy points.
- sparsify: accuracy and dense / sparse-encoded weight bytes at several sparsities.

Prints tables and writes bench/RESULTS_prune.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe  # noqa: E402

from edgeopt.graph.io import load_model  # noqa: E402
from edgeopt.passes import PassContext, get_pass  # noqa: E402
from edgeopt.profile import make_session, measure_latency, profile_model  # noqa: E402
from edgeopt.prune.core import PruneConfig, analyze_model, prune_model  # noqa: E402
from edgeopt.verify.fidelity import accuracy  # noqa: E402
from edgeopt.verify.runtime import run_batched  # noqa: E402

SAMPLES = ROOT / "sample_models"
DIGITS = ("resnet_digits", "mobilenet_digits", "vgg_digits")
CRITERIA = ("l1", "l2", "bn_scale", "apoz", "thinet")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def conv_channels(model) -> dict[str, int]:
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name or n.output[0]: inits[n.input[1]][0] for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in inits}


def builder(name: str):
    from edgeopt.zoo import ensure_model

    return load_model(ensure_model(name))


def section_structure(out: list[str]) -> None:
    rows = []
    pass_cls = get_pass("prune_channels")
    for name in ("resnet50", "mobilenetv2-1.0-224"):
        model = builder(name)
        started = time.perf_counter()
        result = pass_cls().apply(model, pass_cls.Params(ratio=0.3, round_to=8), PassContext())
        seconds = time.perf_counter() - started
        figures = next(n for n in result.notes if n.node == "(model)").figures
        before, after = conv_channels(model), conv_channels(result.model)
        removed = 1 - sum(after.values()) / sum(before.values())
        not8 = [k for k, c in after.items() if c % 8]
        _, analysis = analyze_model(model)
        residual = [g for g in analysis.groups if len(g.sources) >= 2]
        res_pruned = sum(1 for g in residual if after[g.sources[0].node.name] < g.length)
        p0, p1 = profile_model(model).totals["macs"], profile_model(result.model).totals["macs"]
        match = figures["macs_before"] == p0 and figures["macs_after"] == p1
        x = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
        y = make_session(result.model).run(None, x)[0]
        rows.append([name, f"{100 * removed:.1f}%", len(not8), f"{res_pruned}/{len(residual)}",
                     f"{p0 / 1e6:.0f} M", f"{p1 / 1e6:.0f} M", f"{p1 / p0:.3f}", "yes" if match else "NO",
                     "yes" if np.all(np.isfinite(y)) and y.shape == (1, 1000) else "NO", f"{seconds:.1f}"])
        print(rows[-1], flush=True)
    out += ["## Structure: 30 % of channels, round_to 8 (builder nets, 224x224)", "",
            "`prune_channels: {ratio: 0.3, round_to: 8}`; channels = output channels of every Conv (depthwise "
            "included); MACs by `profile_model`; 'pass = profiler' compares the MACs the pass reports with "
            "the profiler's before and after.", "",
            table(["model", "channels removed", "counts not a multiple of 8", "residual groups pruned",
                   "MACs before", "MACs after", "MACs ratio", "pass = profiler", "checker + ORT", "pass s"], rows), ""]


def section_latency(out: list[str], budget: float) -> None:
    model = builder("resnet50")
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    base = measure_latency(model, x, max_seconds=budget)
    macs0 = profile_model(model).totals["macs"]
    rows = [["0 (dense)", f"{macs0 / 1e6:.0f} M", "1.000", f"{base:.1f}", "1.000"]]
    for ratio in (0.2, 0.3, 0.5):
        pruned = prune_model(model, PruneConfig(ratio=ratio, round_to=8)).model
        lat = measure_latency(pruned, x, max_seconds=budget)
        macs = profile_model(pruned).totals["macs"]
        rows.append([f"{ratio}", f"{macs / 1e6:.0f} M", f"{macs / macs0:.3f}", f"{lat:.1f}", f"{lat / base:.3f}"])
        print(rows[-1], flush=True)
    out += ["## Latency falls with MACs: builder ResNet-50, batch 1, onnxruntime CPU", "",
            f"Median single-thread CPU time per run (`measure_latency`, {budget:g} s budget per model); "
            "`prune_channels: {ratio: R, round_to: 8}`, l1.", "",
            table(["ratio", "MACs", "MACs ratio", "latency ms", "latency ratio"], rows), ""]


def _digits_data():
    calib = dict(np.load(SAMPLES / "digits_calib.npz"))
    test = dict(np.load(SAMPLES / "digits_test.npz"))
    return {"input": calib["input"]}, {"input": test["input"]}, test["labels"].astype(np.int64)


def _acc(model, feeds, labels) -> float:
    return accuracy(run_batched(make_session(model), model, feeds), labels)


def ratio_for_macs(model, target: float, round_to: int = 1) -> tuple[float, float]:
    """The smallest global ratio whose pruned MACs are <= target x the original (bisection)."""
    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        out = prune_model(model, PruneConfig(ratio=mid, round_to=round_to))
        if out.macs_after <= target * out.macs_before:
            hi = mid
        else:
            lo = mid
    out = prune_model(model, PruneConfig(ratio=hi, round_to=round_to))
    return hi, out.macs_after / out.macs_before


def section_digits(out: list[str], models: list[str]) -> None:
    calib, test, labels = _digits_data()
    out += ["## Accuracy at 2x fewer MACs, no retraining (digits nets)", "",
            "One global ratio (the smallest giving MACs <= 0.5x, found by bisection; the same channel counts "
            "for every criterion), round_to 1. Criteria and reconstruction learn from digits_calib.npz "
            f"({len(calib['input'])} images); accuracy on digits_test.npz ({len(labels)} images). "
            "'+ LS' = `reconstruct: true` (least-squares refit of the layers reading pruned channels).", ""]
    for name in models:
        model = load_model(SAMPLES / f"{name}.onnx")
        base = _acc(model, test, labels)
        ratio, macs_ratio = ratio_for_macs(model, 0.5)
        rows = []
        for criterion in CRITERIA:
            row = [criterion]
            for reconstruct in (False, True):
                started = time.perf_counter()
                res = prune_model(model, PruneConfig(ratio=ratio, criterion=criterion, reconstruct=reconstruct),
                                  calib, seed=0)
                acc = _acc(res.model, test, labels)
                row += [f"{100 * acc:.2f}", f"{100 * (base - acc):+.2f}", f"{time.perf_counter() - started:.1f}"]
            rows.append(row)
            print(name, row, flush=True)
        ratio8, macs_ratio8 = ratio_for_macs(model, 0.5, round_to=8)
        for criterion in ("l1", "thinet"):
            row = [f"{criterion}, round_to 8 (ratio {ratio8:.3f}, MACs x{macs_ratio8:.3f})"]
            for reconstruct in (False, True):
                started = time.perf_counter()
                res = prune_model(model, PruneConfig(ratio=ratio8, criterion=criterion, round_to=8,
                                                     reconstruct=reconstruct), calib, seed=0)
                acc = _acc(res.model, test, labels)
                row += [f"{100 * acc:.2f}", f"{100 * (base - acc):+.2f}", f"{time.perf_counter() - started:.1f}"]
            rows.append(row)
            print(name, row, flush=True)
        out += [f"### {name}: accuracy {100 * base:.2f}%, ratio {ratio:.3f} -> MACs x{macs_ratio:.3f}", "",
                table(["criterion", "acc %", "drop (points)", "s", "acc % + LS", "drop + LS", "s + LS"], rows), ""]


def section_sensitivity(out: list[str]) -> None:
    from edgeopt.prune.sensitivity import Budget, propose, scan

    calib, test, labels = _digits_data()
    model = load_model(SAMPLES / "resnet_digits.onnx")
    rows = []
    for reconstruct in (False, True):
        config = PruneConfig(ratio=0.0, criterion="l1", reconstruct=reconstruct, balance=False)
        started = time.perf_counter()
        result, evaluate = scan(model, config, [0.25, 0.5, 0.75], test, labels, calib)
        for drop in (0.01, 0.02):
            p = propose(model, result, evaluate, config, Budget(max_accuracy_drop=drop), calib)
            rows.append([f"l1{' + LS' if reconstruct else ''}", f"{100 * drop:g}", f"{p.macs_after / p.macs_before:.3f}",
                         f"{100 * (evaluate.baseline_accuracy - p.measured['accuracy']):+.2f}",
                         f"{p.measured['cosine']:.4f}", len(p.ratios), f"{time.perf_counter() - started:.0f}"])
            print(rows[-1], flush=True)
    out += ["## Sensitivity scan and proposal (resnet_digits)", "",
            "Each group pruned alone at 0.25 / 0.5 / 0.75, measured on digits_test.npz; the proposal is "
            "checked on the whole pruned network (same test set: this shows the search, not a held-out "
            "estimate).", "",
            table(["criterion", "budget (points)", "MACs ratio", "measured drop", "cosine", "groups pruned",
                   "s (scan + proposals)"], rows), ""]


def section_sparsify(out: list[str], models: list[str]) -> None:
    _, test, labels = _digits_data()
    pass_cls = get_pass("sparsify")
    rows = []
    for name in models:
        model = load_model(SAMPLES / f"{name}.onnx")
        base = _acc(model, test, labels)
        first = next(n.name for n in model.graph.node if n.op_type == "Conv")
        variants = [("per_layer", {}), ("global", {}), ("global, first conv dense", {"exclude": [first]})]
        for label, extra in variants:
            for sparsity in (0.3, 0.5, 0.7):
                scope = label.split(",")[0]
                res = pass_cls().apply(model, pass_cls.Params(sparsity=sparsity, scope=scope, **extra), PassContext())
                notes = [n for n in res.notes if n.action == "sparsified"]
                dense = sum(n.figures["dense_bytes"] for n in notes)
                sparse = sum(n.figures["sparse_bytes"] for n in notes)
                acc = _acc(res.model, test, labels)
                rows.append([name, label, sparsity, f"{100 * base:.2f}", f"{100 * acc:.2f}", dense, sparse,
                             f"{sparse / dense:.3f}"])
                print(rows[-1], flush=True)
    out += ["## sparsify: accuracy and weight bytes (digits nets, no retraining)", "",
            "Dense = float32 bytes of the sparsified weights; sparse = non-zeros plus a bitmask or 16-bit "
            "indices, what the profiler counts on a device with `sparse_weights: true` (none of the "
            "built-in profiles). Magnitudes include the BN scale after each layer.", "",
            table(["model", "scope", "sparsity", "acc %", "acc % sparse", "dense B", "sparse B", "ratio"], rows), ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="structure,latency,digits,sensitivity,sparsify")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per latency figure")
    parser.add_argument("--models", default=",".join(DIGITS), help="digits models for the accuracy sections")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_prune.md"))
    args = parser.parse_args()
    only = set(args.only.split(","))
    models = [m for m in args.models.split(",") if (SAMPLES / f"{m}.onnx").exists()]
    out = ["# Channel pruning (prune_channels, sparsify)", "", f"Machine: {describe()}", "",
           f"Command: `.venv/bin/python bench/bench_prune.py --only {args.only}`", ""]
    started = time.perf_counter()
    if "structure" in only:
        section_structure(out)
    if "latency" in only:
        section_latency(out, args.budget)
    if "digits" in only and models:
        section_digits(out, models)
    if "sensitivity" in only and "resnet_digits" in models:
        section_sensitivity(out)
    if "sparsify" in only and models:
        section_sparsify(out, models)
    out.append(f"Total bench time {time.perf_counter() - started:.0f} s.")
    text = "\n".join(out) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
