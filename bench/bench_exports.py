"""Every pass on PyTorch exports of eight architectures (tools/export_zoo.py), the ways people export them.

    .venv-train/bin/python tools/export_zoo.py --out build/exports    # once; needs PyTorch (dev venv)
    .venv/bin/python bench/bench_exports.py [--models bert_ts14 ...]

Per model x pass (`edgeopt run` subprocess, defaults, after simplify + fold_batchnorm, on the model's
NAME.npz, device myriadx, no latency measurement): the exit code (or the one line that says why), the
output cosine against the input model, weight bytes and MACs before -> after, and what the pass said.
Per model: profile MACs and coverage. Writes bench/RESULTS_exports.md; without build/exports it says how to
make them and leaves the results as they are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

EXPORTS = ROOT / "build" / "exports"
PREFIX = ["simplify", "fold_batchnorm"]
PASSES = ["simplify", "fold_batchnorm", "fuse_relu6", "equalize", "prune_channels", "sparsify", "quantize_weights",
          "quantize_codebook", "quantize_static", "convert_fp16", "split_depthwise", "split_spatial"]


def edgeopt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True, cwd=ROOT)


def data_of(model: Path) -> Path:
    return model.with_name(model.stem.split("_")[0] + ".npz")


def cell(model: Path, pass_name: str, work: Path) -> dict:
    passes = PREFIX + ([] if pass_name in PREFIX else [pass_name])
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(model), "output": str(work / "out.onnx"), "device": "myriadx",
                                      "data": str(data_of(model)), "passes": passes}))
    p = edgeopt("run", str(recipe), "--no-measure", "--format", "json", "-q")
    row = {"model": model.stem, "pass": pass_name, "rc": p.returncode}
    lines = p.stderr.strip().splitlines()
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {**row, "said": lines[-1] if lines else "(no output)"}
    first, last = doc["stages"][0], doc["stages"][-1]
    fidelity = (last.get("fidelity") or {}).get("vs_input") or {}
    own = [s for s in doc["stages"] if s.get("pass") == pass_name][-1]  # simplify's row: simplify's own stage
    return {**row, "cosine": fidelity.get("cosine"), "said": own.get("summary", ""),
            "bytes": (first.get("weight_bytes"), last.get("weight_bytes")), "macs": (first.get("macs"), last.get("macs")),
            "warnings": len(last.get("warnings") or [])}


def profile(model: Path) -> dict:
    p = edgeopt("profile", str(model), "--device", "myriadx", "--data", str(data_of(model)), "--no-measure",
                "--format", "json", "-q")
    if p.returncode:
        lines = p.stderr.strip().splitlines()
        return {"model": model.stem, "rc": p.returncode, "said": lines[-1] if lines else ""}
    totals = json.loads(p.stdout)["totals"]
    return {"model": model.stem, "rc": 0, "macs": totals["macs"], "coverage": totals["coverage"],
            "est_ms": totals.get("est_latency_ms")}


def _ratio(pair) -> str:
    a, b = pair or (None, None)
    return "-" if not a or b is None else f"{b / a:.3f}"


def write(rows: list[dict], profiles: list[dict], out: Path, argv: list[str], seconds: float) -> None:
    ok = sum(r["rc"] == 0 for r in rows)
    lines = ["# Every pass on PyTorch exports (tools/export_zoo.py)", "", f"Machine: {describe()}", "",
             f"Command: `.venv/bin/python bench/bench_exports.py {' '.join(argv)}`".rstrip() + " (after "
             "`.venv-train/bin/python tools/export_zoo.py --out build/exports`); "
             f"{seconds:.0f} s.", "",
             "Eight architectures with random weights, exported by torch 2.13's TorchScript exporter "
             "(tsNN: opset NN, dynamic batch) and its dynamo exporter (dynamo18: fixed shapes). Each pass runs "
             "at its defaults after simplify + fold_batchnorm, through `edgeopt run` on the model's 16 samples, "
             "device myriadx. cos = output cosine against the input model; bytes and MACs = after / before.", "",
             f"## {ok} of {len(rows)} pass x model runs exit 0", "",
             "| model | profile MACs | coverage | est ms myriadx |", "|---|---:|---:|---:|"]
    for p in profiles:
        lines.append(f"| {p['model']} | {p['macs']:,} | {p['coverage']:.2f} | {p['est_ms']:.4f} |" if p["rc"] == 0
                     else f"| {p['model']} | exit {p['rc']}: {p['said']} | | |")
    lines += ["", "| model | pass | exit | cos | bytes | MACs | what the pass said |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        cos = "-" if r.get("cosine") is None else f"{r['cosine']:.5f}"
        said = " ".join(str(r["said"]).split())[:140].replace("|", "/")
        warn = " (wreck warning)" if r.get("warnings") else ""
        lines.append(f"| {r['model']} | {r['pass']} | {r['rc']} | {cos} | {_ratio(r.get('bytes'))} | "
                     f"{_ratio(r.get('macs'))} | {said}{warn} |")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    import time

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="model stems (default: every build/exports/*.onnx)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_exports.md")
    args = parser.parse_args(argv)
    models = sorted(EXPORTS.glob("*.onnx"))
    if args.models:
        models = [m for m in models if m.stem in args.models]
    if not models:
        print(f"no exports in {EXPORTS}: make them first with "
              "`.venv-train/bin/python tools/export_zoo.py --out build/exports` (needs PyTorch); results left as they are")
        return 0
    started = time.monotonic()
    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            profiles.append(profile(model))
            for name in PASSES:
                rows.append(cell(model, name, Path(tmp)))
                r = rows[-1]
                print(f"{model.stem} {name}: exit {r['rc']} cos {r.get('cosine')} {str(r['said'])[:100]}", flush=True)
    write(rows, profiles, args.out, argv, time.monotonic() - started)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
