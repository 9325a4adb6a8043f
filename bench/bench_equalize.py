"""Cross-layer equalization bench: per-tensor int8 (weights only, and static) before and after `equalize`.

    .venv/bin/python bench/bench_equalize.py [--skip-mobilenetv2]

Digits MobileNet (sample_models/mobilenet_digits.onnx, trained): calibrated on digits_calib.npz,
accuracy on the 540 images of digits_test.npz. Builder MobileNetV2 (build/models/mobilenetv2-1.0-224.onnx
from `make models`, random weights, so no accuracy): output cosine and top-1 agreement against fp32 on
seeded random inputs. Each model is prepared three ways (fold_batchnorm; fold_batchnorm + equalize;
fold_batchnorm + equalize with clip: skip) and then quantized. Prints a table and writes
bench/RESULTS_equalize.md.
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
from edgeopt.verify.fidelity import accuracy, compare  # noqa: E402
from edgeopt.verify.runtime import make_session  # noqa: E402

SAMPLES = ROOT / "sample_models"
MOBILENETV2 = ROOT / "build" / "models" / "mobilenetv2-1.0-224.onnx"
OUT = ROOT / "bench" / "RESULTS_equalize.md"

PREPS = [
    ("fold_batchnorm", [("fold_batchnorm", {})]),
    ("+ equalize", [("fold_batchnorm", {}), ("equalize", {})]),
    ("+ equalize clip: skip", [("fold_batchnorm", {}), ("equalize", {"clip": "skip"})]),
]
QUANTS = [
    ("float", None, {}),
    ("int8 weights per-tensor", "quantize_weights", {"granularity": "per_tensor"}),
    ("int8 weights per-channel", "quantize_weights", {"granularity": "per_channel"}),
    ("static int8 per-tensor", "quantize_static", {"mode": "all", "per_channel": False}),
    ("static int8 per-channel", "quantize_static", {"mode": "all", "per_channel": True}),
]


def apply(name, params, model, ctx):
    cls = get_pass(name)
    return cls().apply(model, cls.Params(**params), ctx)


def bench(label: str, base, ctx: PassContext, evaluate, static_samples: int) -> list[dict]:
    """Every prep x quantization of one model; evaluate(outputs) -> dict of figures."""
    ref = evaluate.reference
    rows = []
    for prep_label, steps in PREPS:
        model, prep_summary = base, []
        for name, params in steps:
            result = apply(name, params, model, ctx)
            model = result.model
            prep_summary.append(result.summary)
        for quant_label, quant, params in QUANTS:
            started = time.perf_counter()
            if quant is None:
                out_model, summary = model, "; ".join(prep_summary)
            else:
                if quant == "quantize_static":
                    params = {**params, "samples": static_samples}
                result = apply(quant, params, model, ctx)
                out_model, summary = result.model, result.summary
            seconds = time.perf_counter() - started
            out = make_session(out_model).run(None, evaluate.feeds)
            fid = compare(ref, out)
            row = {"model": label, "prep": prep_label, "quant": quant_label, "cosine": fid["cosine"],
                   "top1": fid.get("top1_agreement"), "accuracy": accuracy(out, evaluate.labels),
                   "seconds": seconds, "summary": summary}
            rows.append(row)
            acc = "" if row["accuracy"] is None else f" acc={row['accuracy'] * 100:.2f}%"
            print(f"{label:22s} {prep_label:22s} {quant_label:24s} cos={row['cosine']:.5f} "
                  f"top1={row['top1']:.3f}{acc} ({seconds:.1f} s) {summary[:100]}", flush=True)
    return rows


class Eval:
    def __init__(self, feeds, labels, reference):
        self.feeds, self.labels, self.reference = feeds, labels, reference


def load_npz(path: Path):
    with np.load(path) as npz:
        return {"input": npz["input"].astype(np.float32)}, npz["labels"].reshape(-1).astype(np.int64)


def digits() -> list[dict]:
    base = load_model(SAMPLES / "mobilenet_digits.onnx")
    calib, calib_labels = load_npz(SAMPLES / "digits_calib.npz")
    test, labels = load_npz(SAMPLES / "digits_test.npz")
    ctx = PassContext(data=calib, labels=calib_labels, input_shapes={"input": [1, 1, 32, 32]})
    ev = Eval(test, labels, make_session(base).run(None, test))
    return bench("mobilenet_digits", base, ctx, ev, static_samples=256)


def mobilenetv2() -> list[dict]:
    if not MOBILENETV2.exists():
        print(f"skip MobileNetV2: {MOBILENETV2} not found (make models)", file=sys.stderr)
        return []
    base = load_model(MOBILENETV2)
    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((16, 3, 224, 224)).astype(np.float32)}
    test = {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}
    ctx = PassContext(data=calib, input_shapes={"input": [1, 3, 224, 224]})
    ev = Eval(test, None, make_session(base).run(None, test))
    return bench("mobilenetv2 (builder)", base, ctx, ev, static_samples=16)


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Cross-layer equalization: per-tensor int8 before and after `equalize`",
        "",
        f"Machine: {describe()}",
        "",
        f"Command: `{command}`",
        "",
        "Each model is prepared three ways, then quantized: `fold_batchnorm` alone; `fold_batchnorm` then "
        "`equalize` (default: a ReLU6 inside an equalized pair becomes Relu + a per-channel Min, exact); "
        "`fold_batchnorm` then `equalize` with `clip: skip` (pairs through a ReLU6 left alone). "
        "Weights: `quantize_weights` int8 (symmetric, minmax; per-tensor or per-channel). Static: "
        "`quantize_static` mode `all` (every node it can; default reduce_range: 7-bit weights), "
        "`per_channel: false` or `true`. Cosine and top-1 agreement are against the fp32 input model. "
        "mobilenet_digits: trained, calibrated on digits_calib.npz (256 samples), scored on the 540 "
        "images of digits_test.npz. MobileNetV2 (builder): random weights, 16 seeded random calibration "
        "inputs, 8 seeded random test inputs (no accuracy: random weights have no classes, and top-1 "
        "agreement over 8 near-uniform random-weight logit vectors is noise: read the cosine).",
        "",
        "| model | prep | quantization | cosine | top-1 agreement | accuracy |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy'] * 100:.2f} %"
        lines.append(f"| {r['model']} | {r['prep']} | {r['quant']} | {r['cosine']:.5f} | {r['top1']:.3f} | {acc} |")
    lines += ["", "Pass summaries (prep rows: the float model's passes):", ""]
    seen = set()
    for r in rows:
        if r["quant"] == "float" and (r["model"], r["prep"]) not in seen:
            seen.add((r["model"], r["prep"]))
            lines.append(f"- {r['model']}, {r['prep']}: {r['summary']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mobilenetv2", action="store_true")
    args = parser.parse_args()
    rows = digits()
    if not args.skip_mobilenetv2:
        rows += mobilenetv2()
    command = ".venv/bin/python bench/bench_equalize.py" + (" --skip-mobilenetv2" if args.skip_mobilenetv2 else "")
    OUT.write_text(markdown(rows, command))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
