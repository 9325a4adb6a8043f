"""prune_channels `ratio: auto` at 2x fewer MACs against one uniform ratio, on the trained digits nets.

    .venv/bin/python bench/bench_budget_prune.py [--models resnet_digits,mobilenet_digits]

As bench_prune.py's digits section: criteria and reconstruction (and, for auto, the scan and the budget)
see digits_calib.npz (180 images with labels); accuracy is measured on digits_test.npz (540 images),
which the pass never sees. Uniform = the smallest global ratio with MACs <= 0.5x (bisection, as
bench_prune.py). Auto = `ratio: auto, target_macs: 0.5, max_accuracy_drop: 0.01` on the calibration data.
Writes bench/RESULTS_budget_prune.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_prune import _acc, _digits_data, ratio_for_macs, table  # noqa: E402
from machine import describe  # noqa: E402

from edgeopt.graph.io import load_model  # noqa: E402
from edgeopt.passes import PassContext, get_pass  # noqa: E402
from edgeopt.prune.core import PruneConfig, prune_model  # noqa: E402
from edgeopt.verify.fidelity import compare  # noqa: E402
from edgeopt.verify.runtime import make_session, run_batched  # noqa: E402

SAMPLES = ROOT / "sample_models"


def _cos(model, pruned, feeds) -> float:
    return compare(run_batched(make_session(model), model, feeds), run_batched(make_session(pruned), pruned, feeds))["cosine"]


def bench_model(name: str, rows: list[list], details: list[str]) -> None:
    import numpy as np

    calib, test, labels = _digits_data()
    calib_labels = np.load(SAMPLES / "digits_calib.npz")["labels"].astype(np.int64)
    model = load_model(SAMPLES / f"{name}.onnx")
    base = _acc(model, test, labels)
    pass_cls = get_pass("prune_channels")
    for criterion in ("l1", "thinet"):
        for round_to in (1, 8):
            ratio, macs_ratio = ratio_for_macs(model, 0.5, round_to)
            started = time.perf_counter()
            uniform = prune_model(model, PruneConfig(ratio=ratio, criterion=criterion, round_to=round_to,
                                                     reconstruct=True), calib, seed=0)
            acc = _acc(uniform.model, test, labels)
            rows.append([name, f"uniform {ratio:.3f}", criterion, round_to, f"{macs_ratio:.3f}",
                         f"{_cos(model, uniform.model, test):.4f}", f"{100 * acc:.2f}", f"{100 * (base - acc):+.2f}",
                         f"{time.perf_counter() - started:.0f}", 1])
            print(rows[-1], flush=True)
            started = time.perf_counter()
            params = pass_cls.Params(ratio="auto", target_macs=0.5, max_accuracy_drop=0.01, criterion=criterion,
                                     round_to=round_to, reconstruct=True)
            res = pass_cls().apply(model, params, PassContext(data=calib, labels=calib_labels))
            seconds = time.perf_counter() - started
            f = next(n for n in res.notes if n.node == "(model)").figures
            acc = _acc(res.model, test, labels)
            rows.append([name, f"auto ({f['allocation']})", criterion, round_to,
                         f"{f['macs_after'] / f['macs_before']:.3f}", f"{_cos(model, res.model, test):.4f}",
                         f"{100 * acc:.2f}", f"{100 * (base - acc):+.2f}", f"{seconds:.0f}", f["evaluations"]])
            print(rows[-1], flush=True)
            ratios = ", ".join(f"`{k}` {v:.3g}" for k, v in f["ratios"].items())
            details += [f"- {name}, {criterion}, round_to {round_to}: {res.summary}", f"  - ratios: {ratios}"]
    details.append(f"- {name}: test accuracy before pruning {100 * base:.2f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet_digits,mobilenet_digits")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_budget_prune.md"))
    args = parser.parse_args()
    rows: list[list] = []
    details: list[str] = []
    started = time.perf_counter()
    for name in args.models.split(","):
        bench_model(name, rows, details)
    out = ["# prune_channels `ratio: auto` under a MAC target (digits nets)", "", f"Machine: {describe()}", "",
           f"Command: `.venv/bin/python bench/bench_budget_prune.py --models {args.models}`", "",
           "Target: MACs <= 0.5x. Everything the passes learn or check (criterion scores, least-squares "
           "reconstruction, auto's sensitivity scan at 0.25 / 0.5 / 0.75 and its budget: accuracy drop <= 1 point) "
           "uses digits_calib.npz (180 images); cosine and accuracy below are on digits_test.npz (540 images, "
           "held out). Uniform = one global ratio, the smallest with MACs <= 0.5x (bisection), reconstruction on. "
           "Auto verifies three allocations at the target on the calibration data: `in context` (rounds that "
           "re-measure each group's next cut on the network as pruned so far, reconstructed), `greedy` (the "
           "scan's single-group errors added as if independent) and that uniform ratio; it keeps the best by "
           "the budget, then the calibration output error, and tries a few verified exchanges of channels "
           "from the costliest cut to the cheapest next one (`+ exchanges` when one was kept). The allocation "
           "column says which it kept (`a = b`: the same allocation reached both ways). s = seconds for that "
           "row (auto: scan included), on a shared 2-core machine; evals = whole-network measurements.",
           "", table(["model", "allocation", "criterion", "round_to", "MACs ratio", "test cosine", "test acc %",
                      "drop (points)", "s", "evals"], rows), "", "## What the pass said", "", *details, "",
           f"Total bench time {time.perf_counter() - started:.0f} s."]
    text = "\n".join(out) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
