"""Quantization bench: weight bytes, file size, measured onnxruntime latency, cosine and digits accuracy.

    .venv/bin/python bench/bench_quant.py [--skip-resnet50] [--models mobilenet_digits ...]

Digits models (sample_models/*_digits*.onnx): every quantization pass, calibrated
on digits_calib.npz, scored on digits_test.npz. Builder ResNet-50 (random
weights, built in memory): fp32 against quantize_static auto, latency ratio.
Prints a table and writes bench/RESULTS_quant.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
from edgeopt.profile import profile_model  # noqa: E402
from edgeopt.quant.timing import interleaved_latency, latency_quantiles  # noqa: E402
from edgeopt.verify.fidelity import accuracy, compare  # noqa: E402
from edgeopt.verify.runtime import make_session  # noqa: E402

SAMPLES = ROOT / "sample_models"
DIGITS = ("mobilenet_digits", "resnet_digits", "vgg_digits", "resnet_digits_opset11", "mobilenet_digits_constants")
CONFIGS = [  # defaults: float16 scales (per channel / block) and float16 biases
    ("fp32", None, {}),
    ("int8 per-channel", "quantize_weights", {"bits": 8}),
    ("int8 per-channel float32 scales+biases", "quantize_weights",
     {"bits": 8, "scale_dtype": "float32", "biases": "float32"}),
    ("int8 per-channel cast_mul", "quantize_weights", {"bits": 8, "decode": "cast_mul"}),
    ("int4 per-channel minmax", "quantize_weights", {"bits": 4, "clip": "minmax"}),
    ("int4 per-channel", "quantize_weights", {"bits": 4}),
    ("int4 block 32", "quantize_weights", {"bits": 4, "granularity": "block", "block_size": 32}),
    ("codebook 4-bit channel_scaled", "quantize_codebook", {"bits": 4}),
    ("codebook 4-bit tensor", "quantize_codebook", {"bits": 4, "granularity": "per_tensor"}),
    ("codebook 4-bit channel", "quantize_codebook", {"bits": 4, "granularity": "per_channel"}),
    ("fp16", "convert_fp16", {}),
    ("static int8 auto", "quantize_static", {}),
    ("static int8 all", "quantize_static", {"mode": "all"}),
]


def load_npz(path: Path):
    with np.load(path) as npz:
        return {"input": npz["input"].astype(np.float32)}, npz["labels"].reshape(-1).astype(np.int64)


def apply(name, params, model, ctx):
    cls = get_pass(name)
    return cls().apply(model, cls.Params(**params), ctx)


SERIES = 3  # independent interleaved measurements per row; sub-ms runs vary ~10% from one to the next


def latency_ratio(base, model, feeds):
    """(fp32 median ms, median ms, speed-up, p10 speed-up, (lowest, highest) speed-up) over SERIES
    interleaved series of fp32 against model: the speed-ups are the median over the series."""
    series = [latency_quantiles([base, model], feeds, (0.1, 0.5), rounds=5, seconds_per_round=0.15)
              for _ in range(SERIES)]
    ratios = [fp[1] / q[1] for fp, q in series]
    p10s = [fp[0] / q[0] for fp, q in series]
    return (statistics.median(fp[1] for fp, _ in series), statistics.median(q[1] for _, q in series),
            statistics.median(ratios), statistics.median(p10s), (min(ratios), max(ratios)))


def bench_digits(names: list[str]) -> list[dict]:
    calib, calib_labels = load_npz(SAMPLES / "digits_calib.npz")
    test, labels = load_npz(SAMPLES / "digits_test.npz")
    rows = []
    for stem in names:
        path = SAMPLES / f"{stem}.onnx"
        if not path.exists():
            print(f"skip {stem}: {path} not found", file=sys.stderr)
            continue
        base = load_model(path)
        ref = make_session(base).run(None, test)
        base_acc = accuracy(ref, labels)
        ctx = PassContext(data=calib, labels=calib_labels, input_shapes={"input": [1, 1, 32, 32]})
        for label, pass_name, params in CONFIGS:
            started = time.perf_counter()
            if pass_name is None:
                model, summary, modified = base, "input", False
            else:
                result = apply(pass_name, params, base, ctx)
                model, summary, modified = result.model, result.summary, result.modified
            seconds = time.perf_counter() - started
            out = make_session(model).run(None, test)
            lat_fp, lat, ratio, p10_ratio, spread = latency_ratio(base, model, {"input": test["input"][:1]})
            row = {"model": stem, "config": label, "modified": modified, "weight_bytes": profile_model(model).totals["weight_bytes"],
                   "file_bytes": len(model.SerializeToString()), "latency_ms": lat, "latency_fp32_ms": lat_fp,
                   "ratio": ratio, "p10_ratio": p10_ratio, "ratio_spread": spread,
                   "cosine": compare(ref, out)["cosine"], "accuracy": accuracy(out, labels),
                   "correct": (np.argmax(out[0], axis=1) == labels).tolist(),
                   "accuracy_fp32": base_acc, "seconds": seconds, "summary": summary}
            rows.append(row)
            print(f"{stem:28s} {label:26s} wb={row['weight_bytes']:>9} lat={lat:.3f}/{lat_fp:.3f} ms "
                  f"cos={row['cosine']:.5f} acc={row['accuracy']:.4f} ({seconds:.1f} s) {summary[:90]}",
                  flush=True)
    return rows


def bench_resnet50() -> list[dict]:
    from edgeopt.zoo import build_resnet50

    base = build_resnet50()
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((32, 3, 224, 224)).astype(np.float32)}
    ctx = PassContext(data=data, input_shapes={"input": [1, 3, 224, 224]})
    # Random weights: the logits carry no classes, so the budget is on cosine alone.
    params = {"samples": 32, "min_cosine": 0.98, "min_top1_agreement": 0.0}
    started = time.perf_counter()
    result = apply("quantize_static", params, base, ctx)
    seconds = time.perf_counter() - started
    one = {"input": data["input"][:1]}
    lat_fp, lat_q = interleaved_latency([base, result.model], one, rounds=5, seconds_per_round=2.0)
    ref = make_session(base).run(None, {"input": data["input"][:8]})
    out = make_session(result.model).run(None, {"input": data["input"][:8]})
    row = {"model": "resnet50 (builder)", "config": "static int8 auto", "modified": result.modified,
           "weight_bytes_fp32": profile_model(base).totals["weight_bytes"],
           "weight_bytes": profile_model(result.model).totals["weight_bytes"],
           "file_bytes_fp32": len(base.SerializeToString()), "file_bytes": len(result.model.SerializeToString()),
           "latency_fp32_ms": lat_fp, "latency_ms": lat_q, "cosine": compare(ref, out)["cosine"],
           "seconds": seconds, "summary": result.summary}
    print(f"resnet50 static int8 auto: {lat_fp:.1f} -> {lat_q:.1f} ms ({lat_fp / lat_q:.2f}x), "
          f"cos={row['cosine']:.4f}, {seconds:.0f} s; {result.summary}", flush=True)
    return [row]


def sign_test(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """Images only a gets right, only b gets right, and the exact two-sided sign-test p-value (McNemar)
    that a and b are equally accurate: how far a gap of a few images is from chance."""
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return only_a, only_b, min(1.0, 2 * tail)


def acceptance(digits: list[dict], r50: list[dict]) -> list[str]:
    """One line per criterion and model: the figure, the limit, met or not."""
    by = {(r["model"], r["config"]): r for r in digits}
    out = []

    def ratio(r):
        return by[(r["model"], "fp32")]["weight_bytes"] / r["weight_bytes"]

    def drop(r):
        return (r["accuracy_fp32"] - r["accuracy"]) * 100

    noise = {r["model"]: r["ratio"] for r in digits if r["config"] == "fp32"}
    for model in dict.fromkeys(r["model"] for r in digits):
        rows = {c: by.get((model, c)) for c in (
            "int8 per-channel", "int8 per-channel float32 scales+biases", "int4 per-channel", "int4 block 32",
            "codebook 4-bit channel_scaled", "int4 per-channel minmax", "static int8 auto", "static int8 all")}
        if any(v is None for v in rows.values()):
            continue
        for c in ("int8 per-channel", "int8 per-channel float32 scales+biases"):
            r = rows[c]
            ok = ratio(r) >= 3.9 and drop(r) <= 0.5
            out.append(f"- {model}, {c}: {ratio(r):.2f}x fewer weight bytes (>= 3.9), drop {drop(r):+.2f} "
                       f"points (<= 0.5): {'met' if ok else 'NOT met'}")
        for c in ("int4 per-channel", "int4 block 32"):
            r = rows[c]
            ok = ratio(r) >= 7 and drop(r) <= 2
            out.append(f"- {model}, {c}: {ratio(r):.2f}x (>= 7), drop {drop(r):+.2f} (<= 2): "
                       f"{'met' if ok else 'NOT met'}")
        cb = rows["codebook 4-bit channel_scaled"]
        for c in ("int4 per-channel", "int4 block 32", "int4 per-channel minmax"):
            u = rows[c]
            only_cb, only_u, p = sign_test(cb["correct"], u["correct"])
            out.append(f"- {model}, codebook 4-bit channel_scaled {cb['accuracy'] * 100:.2f}% (cosine "
                       f"{cb['cosine']:.4f}, {ratio(cb):.2f}x) vs uniform {c} {u['accuracy'] * 100:.2f}% (cosine "
                       f"{u['cosine']:.4f}, {ratio(u):.2f}x): {'met' if cb['accuracy'] >= u['accuracy'] else 'NOT met'}"
                       f" (images only the codebook gets right {only_cb}, only int4 {only_u}; sign test p={p:.2f})")
        for c in ("static int8 all", "static int8 auto"):
            r = rows[c]
            speed = ""
            if c == "static int8 auto":
                floor = by[(model, "fp32")]["ratio_spread"][0]
                speed = ("never slower: met (left unchanged)" if not r["modified"] else
                         "never slower: met" if r["ratio"] >= 1.0 else
                         f"never slower: within noise (x{r['ratio']:.2f} >= fp32-against-itself low x{floor:.2f})"
                         if r["ratio"] >= floor else "never slower: NOT met") + "; "
            out.append(f"- {model}, {c}: drop {drop(r):+.2f} (<= 1): {'met' if drop(r) <= 1 else 'NOT met'}; {speed}"
                       f"median latency {r['latency_ms']:.3f} vs fp32 {r['latency_fp32_ms']:.3f} ms "
                       f"(x{r['ratio']:.2f}, series x{r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f}, "
                       f"p10 x{r['p10_ratio']:.2f}; fp32 against itself x{noise[model]:.2f})")
    for r in r50:
        speed = r["latency_fp32_ms"] / r["latency_ms"]
        out.append(f"- ResNet-50 builder, static int8 auto: x{speed:.2f} faster (>= 1.5): "
                   f"{'met' if speed >= 1.5 else 'NOT met'}")
    return out


def write_results(digits: list[dict], r50: list[dict], argv: list[str]) -> str:
    lines = ["## Quantization (bench/bench_quant.py)", "",
             f"Machine: {describe()}", "",
             f"Command: `.venv/bin/python bench/bench_quant.py {' '.join(argv)}`".rstrip() + "", "",
             "Digits models: calibration on digits_calib.npz, accuracy and cosine (vs fp32 logits) on "
             "digits_test.npz. Weight bytes: the profiler's stored bytes (int4 packed = n/2, decode "
             "subgraphs counted as storage). Latency: onnxruntime CPU, one thread, batch 1, median runs in "
             f"{SERIES} independent series, each interleaving rounds of this model and the fp32 model (speed-up = "
             "fp32 / this: the median over the series, with the lowest and highest in brackets; 'p10': the same "
             "for 10th percentiles). The fp32 rows time two sessions of one model: their spread is this "
             "machine's noise.", "",
             "| model | pass | weight bytes | x fewer | file bytes | latency ms | fp32 ms | speed-up (series) | speed-up p10 "
             "| cosine | accuracy | drop (points) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_wb = {r["model"]: r["weight_bytes"] for r in digits if r["config"] == "fp32"}
    for r in digits:
        drop = (r["accuracy_fp32"] - r["accuracy"]) * 100
        lines.append(f"| {r['model']} | {r['config']} | {r['weight_bytes']:,} | "
                     f"{base_wb[r['model']] / r['weight_bytes']:.2f} | {r['file_bytes']:,} | {r['latency_ms']:.3f} | "
                     f"{r['latency_fp32_ms']:.3f} | {r['ratio']:.2f} ({r['ratio_spread'][0]:.2f}-"
                     f"{r['ratio_spread'][1]:.2f}) | {r['p10_ratio']:.2f} | "
                     f"{r['cosine']:.5f} | {r['accuracy'] * 100:.2f} | {drop:+.2f} |")
    if r50:
        lines += ["", "Builder ResNet-50 (random weights, BN unfolded, calibrated on 32 seeded random inputs; "
                  "fidelity budget cosine >= 0.98 since random logits have no classes):", "",
                  "| model | pass | weight bytes fp32 -> int8 | file bytes fp32 -> int8 | latency fp32 -> int8 ms "
                  "| speed-up | cosine | pass seconds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in r50:
            lines.append(f"| {r['model']} | {r['config']} | {r['weight_bytes_fp32']:,} -> {r['weight_bytes']:,} | "
                         f"{r['file_bytes_fp32']:,} -> {r['file_bytes']:,} | {r['latency_fp32_ms']:.1f} -> "
                         f"{r['latency_ms']:.1f} | {r['latency_fp32_ms'] / r['latency_ms']:.2f} | "
                         f"{r['cosine']:.4f} | {r['seconds']:.0f} |")
        lines += ["", f"Summary: {r50[0]['summary']}"]
    lines += ["", "Acceptance (issue 4), from the rows above:", ""] + acceptance(digits, r50)
    lines += ["", "Pass summaries (digits):", ""]
    for r in digits:
        if r["config"] != "fp32":
            lines.append(f"- {r['model']} / {r['config']}: {r['summary']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(DIGITS))
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args(argv)
    digits = bench_digits(args.models)
    r50 = [] if args.skip_resnet50 else bench_resnet50()
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "bench_quant.json").write_text(json.dumps({"digits": digits, "resnet50": r50}, indent=1))
    text = write_results(digits, r50, argv)
    print(text)
    (ROOT / "bench" / "RESULTS_quant.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
