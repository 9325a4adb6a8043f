"""Real-export corpus bench: every pass on every corpus model, and the profile of each model.

    .venv/bin/python bench/bench_corpus.py [--models ppocr_det yolov8n] [--passes quantize_static] [--keep]

Per model x pass (`edgeopt run` subprocess, defaults, after simplify + fold_batchnorm, on the model's
rendered inputs from `make corpus`, devices host and myriadx): the outcome (exit code, or the one line
that says why the pass does not apply), output cosine against the input model, weight bytes, MACs and
host latency (measured, onnxruntime 1 thread) before -> after. Per model: profile coverage (counted
exactly), MACs against an independent count (bench/independent_macs.py: onnxruntime shapes + textbook
formulas), host latency predicted vs measured, and the lossless chain (simplify, fold_batchnorm,
fuse_relu6) keeping MACs and outputs. Writes bench/RESULTS_corpus.md.

The whole grid takes hours on 2 cores; `--keep` regathers part of it: the rows it does not rerun are
kept from the file as it was, and the header lists every run the file holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from machine import describe  # noqa: E402

from edgeopt.passes import pass_names  # noqa: E402
from edgeopt.zoo.corpus import MODELS, data_path, fetch, model_path, write_inputs  # noqa: E402

CACHE = ROOT / "build" / "corpus"
PREFIX = ["simplify", "fold_batchnorm"]
LOSSLESS = ["simplify", "fold_batchnorm", "fuse_relu6"]
DEVICES = ["host", "myriadx"]
COMPARED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the MAC ops the independent count covers


def run(model: Path, data: Path, passes: list, work: Path) -> tuple[int, dict | None, str]:
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(model), "output": str(work / "out.onnx"), "device": DEVICES,
                                      "data": str(data), "passes": passes}))
    p = subprocess.run([sys.executable, "-m", "edgeopt", "run", str(recipe), "--format", "json", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    doc = None
    if p.stdout.strip():
        try:
            doc = json.loads(p.stdout)
        except json.JSONDecodeError:
            pass
    lines = p.stderr.strip().splitlines()
    return p.returncode, doc, (lines[-1] if lines else "")


def _host(stage: dict, key: str):
    return (stage.get("devices") or {}).get("host", {}).get(key) if key.startswith("est_") else stage.get(key)


def cell(model, pass_name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rc, doc, message = run(model_path(model, CACHE), data_path(model, CACHE), PREFIX + [pass_name], Path(tmp))
    row = {"model": model.key, "pass": pass_name, "rc": rc, "message": message}
    if rc == 0 and doc:
        first, last = doc["stages"][0], doc["stages"][-1]
        row.update(cosine=last["fidelity"]["vs_input"]["cosine"], summary=last.get("summary", ""),
                   warnings=last.get("warnings", []),
                   weight_bytes=(first["weight_bytes"], last["weight_bytes"]), macs=(first["macs"], last["macs"]),
                   host_ms=(first["measured_latency_ms"], last["measured_latency_ms"]),
                   est_host_ms=(_host(first, "est_latency_ms"), _host(last, "est_latency_ms")))
    return row


def first_sample(model) -> dict:
    """The model's first input sample, cut the way edgeopt cuts it (each input on its own batch axis)."""
    from edgeopt.graph.io import load_model
    from edgeopt.verify.inputs import load_data
    from edgeopt.verify.runtime import static_batch

    onnx_model = load_model(model_path(model, CACHE))
    return dict(load_data(data_path(model, CACHE), onnx_model).first(static_batch(onnx_model) or 1))


def model_profile(model) -> dict:
    """Coverage, MACs vs the independent count, predicted vs measured host latency, lossless chain."""
    from independent_macs import independent_macs

    with tempfile.TemporaryDirectory() as tmp:
        rc, doc, message = run(model_path(model, CACHE), data_path(model, CACHE), LOSSLESS, Path(tmp))
    row = {"model": model.key, "what": model.what, "rc": rc, "message": message}
    if rc != 0 or not doc:
        return row
    first = doc["stages"][0]
    stage_macs = [s["macs"] for s in doc["stages"]]
    row.update(
        macs=first["macs"], coverage=None, est_host_ms=_host(first, "est_latency_ms"),
        host_ms=first["measured_latency_ms"], peak=first["peak_activation_bytes"],
        lossless_macs_kept=max(stage_macs) - min(stage_macs) <= 1e-6 * max(stage_macs),
        lossless_max_error=max(s["fidelity"]["vs_input"]["max_abs_error"] for s in doc["stages"][1:]),
    )
    # the profile per sample (or at the model's fixed batch), on the model's own first sample
    p = subprocess.run([sys.executable, "-m", "edgeopt", "profile", str(model_path(model, CACHE)), "--device", "host",
                        "--data", str(data_path(model, CACHE)), "--format", "json", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode == 0:
        doc = json.loads(p.stdout)
        totals = doc["totals"]
        row.update(coverage=totals.get("coverage"), est_host_ms=totals.get("est_latency_ms"),
                   host_ms=totals.get("measured_latency_ms"), estimated=totals.get("estimated_ops"),
                   choices=totals.get("subgraph_choices"),
                   macs4=sum(l["macs"] or 0 for l in doc["layers"] if l["op_type"] in COMPARED and l.get("counted")))
    by_op = independent_macs(onnx.load(model_path(model, CACHE)), None, first_sample(model))["by_op"]
    row["independent_macs"] = sum(v for op, v in by_op.items() if op in COMPARED)
    return row


def _said(summary: str, limit: int = 110) -> str:
    text = " ".join(str(summary).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _pct(a, b):
    return "-" if not a or b is None else f"{(b - a) / a * 100:+.1f} %"


def _num(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def earlier(out: Path) -> tuple[list[str], dict, dict]:
    """What a file written by `write` holds: its runs (Machine / Command lines), its model rows and its
    pass rows, keyed by model and by (model, pass)."""
    if not out.exists():
        return [], {}, {}
    runs, models, cells, section = [], {}, {}, None
    for line in out.read_text().splitlines():
        if line.startswith(("Machine:", "Command:", "Run:")):
            runs.append(line.rstrip())
        elif line.startswith("### "):
            section = line[4:].strip()
        elif line.startswith("| ") and not line.startswith(("| model |", "|---")):
            cols = [c.strip() for c in line.strip("|").split("|")]
            if section == "Models":
                models[cols[0]] = line
            elif section == "Pass x model" and len(cols) > 1:
                cells[(cols[0], cols[1])] = line
    return runs, models, cells


def _in_grid_order(table: list[str]) -> list[str]:
    """Table rows ordered by the corpus's model order, then by pass name (kept and fresh rows mixed)."""
    order = {m.key: i for i, m in enumerate(MODELS)}

    def key(line):
        cols = [c.strip() for c in line.strip("|").split("|")]
        return order.get(cols[0], len(order)), cols[1] if len(cols) > 1 else ""
    return sorted(table, key=key)


def write(rows: list[dict], profiles: list[dict], out: Path, argv: list[str], keep: bool = False) -> None:
    runs, kept_models, kept_cells = earlier(out) if keep else ([], {}, {})
    if runs:  # one "Run:" line per run the file holds, the newest last
        old = [r for r in runs if r.startswith("Run:")] or [
            f"Run: {' '.join(r.split(': ', 1)[1] for r in runs[:2])}"]
        runs = old + [f"Run: {describe()}; `python bench/bench_corpus.py {' '.join(argv)}`  "]
        header = ["Regathered in parts (`--keep`): each row is from the newest run that covered it.  "] + [
            r if r.endswith("  ") else r + "  " for r in runs]
    else:
        header = [f"Machine: {describe()}  ", f"Command: `python bench/bench_corpus.py {' '.join(argv)}`".rstrip() + "  "]
    lines = ["## Real-export corpus (bench/bench_corpus.py)", "", *header,
             "Each cell: `edgeopt run` with simplify + fold_batchnorm + the pass at its defaults, on the model's "
             "rendered inputs (`make corpus`); cosine is the output against the input model; host ms is onnxruntime "
             "at 1 thread, batch of the recipe's first sample; est is the host profile's roofline.", "",
             "ConvTranspose is counted on the input side, N x Cin x prod(input spatial) x Cout/group x "
             "prod(kernel), here and in the independent count: PP-OCRv4 det's 2x2 stride-2 ConvTranspose "
             "([1, 24, 160, 160] in, 24 out) is 59.0 M MACs. onnx-tool (bench_profile's cross-check) counts it "
             "like a Conv over its output, stride^2 = 4x too many (238 M), so it is not the reference here.", ""]
    lines += ["### Models", "",
              "| model | export | coverage | MACs (all) | Conv/ConvT/Gemm/MatMul MACs | same, independent | diff "
              "| est host ms | measured host ms | est / measured | lossless chain: MACs kept, max error |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    fresh = {p["model"] for p in profiles}
    table_start = len(lines)
    lines += [line for model, line in kept_models.items() if model not in fresh]
    for p in profiles:
        if p["rc"] != 0:
            lines.append(f"| {p['model']} | {p['what']} | FAILED rc={p['rc']}: {p['message']} ||||||||")
            continue
        ind = p.get("independent_macs")
        ratio = p["est_host_ms"] / p["host_ms"] if p.get("est_host_ms") and p.get("host_ms") else None
        lines.append(
            f"| {p['model']} | {p['what']} | {_num(p.get('coverage'), '{:.0%}')} | {p['macs'] / 1e6:.3f} M | "
            f"{p['macs4'] / 1e6:.3f} M | {'-' if ind is None else f'{ind / 1e6:.3f} M'} | {_pct(ind, p['macs4'])} | "
            f"{_num(p['est_host_ms'])} | {_num(p['host_ms'])} | {_num(ratio, '{:.2f}')} | "
            f"{'yes' if p['lossless_macs_kept'] else 'NO'}, {p['lossless_max_error']:.2g} |")
    lines[table_start:] = _in_grid_order(lines[table_start:])
    lines += ["", "### Pass x model", "",
              "| model | pass | outcome | cosine | weight bytes | MACs | host ms (measured) | host ms (est) | what the pass said |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    rerun = {(r["model"], r["pass"]) for r in rows}
    table_start = len(lines)
    lines += [line for cell, line in kept_cells.items() if cell not in rerun]
    for r in rows:
        if r["rc"] != 0:
            outcome = {2: "does not apply", 1: "check failed", 3: "FAILED"}.get(r["rc"], "FAILED")
            lines.append(f"| {r['model']} | {r['pass']} | {outcome} (exit {r['rc']}): {r['message']} ||||||")
            continue
        wb, macs, ms, est = r["weight_bytes"], r["macs"], r["host_ms"], r["est_host_ms"]
        outcome = "ok" + (" (warning)" if r["warnings"] else "")
        lines.append(
            f"| {r['model']} | {r['pass']} | {outcome} | {_num(r['cosine'], '{:.4f}')} | "
            f"{wb[0] / 1e3:.0f} -> {wb[1] / 1e3:.0f} kB ({_pct(*wb)}) | {_pct(*macs)} | "
            f"{_num(ms[0])} -> {_num(ms[1])} ({_pct(*ms)}) | {_num(est[0])} -> {_num(est[1])} | "
            f"{_said(r['summary'])} |")
    lines[table_start:] = _in_grid_order(lines[table_start:])
    failed = [r for r in rows if r["rc"] not in (0, 2)] + [p for p in profiles if p["rc"] != 0]
    kept = len([c for c in kept_cells if c not in rerun]) + len([m for m in kept_models if m not in fresh])
    lines += ["", f"Cells failed: {len(failed)} of {len(rows) + len(profiles)} run"
              + (f" ({kept} rows kept from earlier runs)." if kept else "."), ""]
    out.write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=[m.key for m in MODELS])
    parser.add_argument("--passes", nargs="*", default=[p for p in pass_names() if p not in PREFIX])
    parser.add_argument("--out", default=str(HERE / "RESULTS_corpus.md"))
    parser.add_argument("--keep", action="store_true", help="keep the rows of --out that this run does not redo")
    args = parser.parse_args(argv)
    fetch(CACHE)
    write_inputs(CACHE)
    models = [m for m in MODELS if m.key in args.models]
    profiles = []
    for model in models:
        profiles.append(model_profile(model))
        print(f"{model.key}: profile {profiles[-1].get('macs')} MACs, independent {profiles[-1].get('independent_macs')}",
              flush=True)
    rows = []
    for model in models:
        for pass_name in args.passes:
            rows.append(cell(model, pass_name))
            r = rows[-1]
            print(f"{model.key:16s} {pass_name:18s} rc={r['rc']} cos={r.get('cosine')} {r['message'][:120]}", flush=True)
    write(rows, profiles, Path(args.out), argv, keep=args.keep)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
