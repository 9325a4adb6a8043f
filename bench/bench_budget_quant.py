"""Mixed-precision weights under a budget: quantize_weights bits: auto against uniform int8 / int4.

Per model a Pareto table: weight bytes (the profiler's), est. latency on myriadx, output cosine
against fp32 and, for the digits models, top-1 accuracy. PP-OCRv4 det and YOLOv8n are the corpus
exports on their rendered inputs (build/corpus; `make corpus`); the digits models pick their layers on
the even-numbered 270 test images (labels: max_accuracy_drop) and are scored on all 540 and on the
270 odd-numbered ones they never saw.

    .venv/bin/python bench/bench_budget_quant.py     # writes bench/RESULTS_budget_quant.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeopt.devices import load_device  # noqa: E402
from edgeopt.graph.shapes import resolve_input_shapes  # noqa: E402
from edgeopt.passes import PassContext, get_pass  # noqa: E402
from edgeopt.profile.profiler import profile_model  # noqa: E402
from edgeopt.verify.fidelity import accuracy, compare  # noqa: E402
from edgeopt.verify.runtime import make_session, run_batched  # noqa: E402

PASS = get_pass("quantize_weights")
DEVICE = load_device("myriadx")
CORPUS = ROOT / "build" / "corpus"
MODELS = [
    ("PP-OCRv4 det", CORPUS / "models" / "ch_PP-OCRv4_det_infer.onnx", CORPUS / "data" / "ppocr_det.npz",
     [0.999, 0.995, 0.99]),
    ("YOLOv8n", CORPUS / "models" / "320n.onnx", CORPUS / "data" / "yolov8n.npz", [0.999, 0.995, 0.99]),
] + [(f"{name}_digits", ROOT / "sample_models" / f"{name}_digits.onnx", ROOT / "sample_models" / "digits_test.npz",
      [0.0, 0.005, 0.01]) for name in ("mobilenet", "resnet", "vgg")] + [
    ("ResNet-50 (builder, random weights)", ROOT / "build" / "models" / "resnet50.onnx",
     ROOT / "build" / "bench" / "resnet50_inputs.npz", [0.999, 0.995, 0.99])]


def ensure_builder_inputs() -> None:
    """The builder ResNet-50 (`make models`) and 4 seeded random 224x224 inputs for it: random weights
    have no classes, so its rows report cosine only."""
    from edgeopt.zoo.store import ensure_model

    ensure_model("resnet50", ROOT / "build" / "models")
    path = ROOT / "build" / "bench" / "resnet50_inputs.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.savez(path, input=rng.standard_normal((4, 3, 224, 224)).astype(np.float32))


def load_npz(path: Path):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, arrays.pop("labels", None)


def outputs(model, feeds):
    return run_batched(make_session(model), model, feeds)


def row(label, model, ref, feeds, labels, shapes, seconds=None, summary=""):
    prof = profile_model(model, DEVICE, shapes)
    out = outputs(model, feeds)
    r = {"label": label, "bytes": prof.totals["weight_bytes"], "latency": prof.totals["est_latency_ms"],
         "cosine": compare(ref, out)["cosine"], "seconds": seconds, "summary": summary}
    if labels is not None:
        r["acc"] = accuracy(out, labels)
        odd = np.arange(1, len(labels), 2)
        r["acc_heldout"] = accuracy([o[odd] for o in out], labels[odd])
    return r


def bench_model(name, path, data_path, budgets):
    model = onnx.load(str(path))
    feeds, labels = load_npz(data_path)
    shapes = resolve_input_shapes(model, {}, feeds)
    ref = outputs(model, feeds)
    rows = [row("fp32", model, ref, feeds, labels, shapes)]
    for bits in (8, 4):
        result = PASS().apply(model, PASS.Params(bits=bits), PassContext())
        rows.append(row(f"uniform int{bits} per channel", result.model, ref, feeds, labels, shapes))
    if labels is not None:  # pick on the even half, score on all and on the odd half
        even = np.arange(0, len(labels), 2)
        ctx = PassContext(data={k: v[even] for k, v in feeds.items()}, labels=labels[even], input_shapes=shapes)
    else:
        ctx = PassContext(data=feeds, input_shapes=shapes)
    for budget in budgets:
        params = (PASS.Params(bits="auto", max_accuracy_drop=budget) if labels is not None
                  else PASS.Params(bits="auto", min_cosine=budget))
        started = time.perf_counter()
        result = PASS().apply(model, params, ctx)
        seconds = time.perf_counter() - started
        label = f"auto, accuracy drop <= {budget * 100:g} pt" if labels is not None else f"auto, cosine >= {budget}"
        rows.append(row(label, result.model, ref, feeds, labels, shapes, seconds, result.summary))
    return rows


def table(name, rows) -> list[str]:
    base = rows[0]["bytes"]
    digits = "acc" in rows[0]
    head = "| setting | weight bytes | vs fp32 | est. latency myriadx (ms) | cosine vs fp32 |"
    head += " accuracy (540) | held-out 270 | pass time (s) |" if digits else " pass time (s) |"
    lines = [f"### {name}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["label"], f"{r['bytes']:,}", f"{base / r['bytes']:.2f}x", f"{r['latency']:.3f}", f"{r['cosine']:.5f}"]
        if digits:
            cells += [f"{r['acc'] * 100:.2f} %", f"{r['acc_heldout'] * 100:.2f} %"]
        cells.append("" if r["seconds"] is None else f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
        if r["summary"]:
            lines.append(f"- {r['label']}: {r['summary']}")
    lines.append("")
    return lines


def target_line(name: str, rows: list[dict]) -> str:
    """The issue's target for this model and the best auto row against it."""
    base, auto = rows[0], [r for r in rows if r["label"].startswith("auto")]
    if "acc" in base:  # accuracy drop <= 0.5 point at >= 6x
        ok = [r for r in auto if base["acc"] - r["acc"] <= 0.005 + 1e-9]
        best = max(ok, key=lambda r: base["bytes"] / r["bytes"], default=None)
        if best is None:
            return f"- {name}: no auto row within 0.5 point: target (<= 0.5 point at >= 6x) not met"
        ratio = base["bytes"] / best["bytes"]
        return (f"- {name}: {ratio:.2f}x fewer weight bytes at {(base['acc'] - best['acc']) * 100:+.2f} point "
                f"accuracy change on 540 ({best['label']}): target <= 0.5 point at >= 6x "
                f"{'met' if ratio >= 6 else 'NOT met'}")
    ok = [r for r in auto if r["cosine"] >= 0.99]
    best = max(ok, key=lambda r: base["bytes"] / r["bytes"], default=None)
    if best is None:
        return f"- {name}: no auto row at cosine >= 0.99"
    ratio = base["bytes"] / best["bytes"]
    line = f"- {name}: {ratio:.2f}x fewer weight bytes at cosine {best['cosine']:.4f} ({best['label']})"
    if name.startswith("PP-OCRv4 det"):
        line += f": target cosine >= 0.99 at >= 5x {'met' if ratio >= 5 else 'NOT met'}"
    return line


def main() -> None:
    out = ["# Mixed-precision weights under a budget (quantize_weights bits: auto)", "",
           "Generated by `.venv/bin/python bench/bench_budget_quant.py` (2 shared cores; pass times are "
           "wall time under whatever load the machine had). Weight bytes and latency are the profiler's "
           "(`edgeopt profile --device myriadx`); cosine is over all outputs against fp32 on the model's "
           "data. Uniform rows are quantize_weights bits 8 / 4 at its defaults (per channel, float32 "
           "scales, float16 biases); auto chooses per layer among float, float16, int8 per channel, int4 in "
           "blocks of 32 and int4 per channel, minimizing weight bytes.", ""]
    targets = ["## Targets (issue 11)", ""]
    ensure_builder_inputs()
    for name, path, data, budgets in MODELS:
        if not path.exists() or not data.exists():
            out += [f"### {name}", "", f"skipped: {path.name} or {data.name} missing (run `make corpus`)", ""]
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows = bench_model(name, path, data, budgets)
        out += table(name, rows)
        targets.append(target_line(name, rows))
    out[4:4] = targets + [""]
    text = "\n".join(out) + "\n"
    (ROOT / "bench" / "RESULTS_budget_quant.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
