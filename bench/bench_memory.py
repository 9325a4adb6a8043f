"""Peak memory of every pass: each `edgeopt run` as a child process, its peak RSS from os.wait4.

    .venv/bin/python bench/bench_memory.py [--models ppocr_det] [--passes quantize_static] [--skip-corpus]
    .venv/bin/python bench/bench_memory.py --before /tmp/base   # also the headline on another checkout

Three sections, written to bench/RESULTS_memory.md:

1. Headline: quantize_static on PP-OCRv4 det at [1, 3, 640, 640] with 32 calibration samples
   (`calibration_data`; `data`, what the pipeline verifies every stage on, holds 4 other pages: the
   pipeline runs all of `data` in one onnxruntime batch, which is verify/'s business, and at 32 pages
   that alone is 4.8 GB; its row here says so). With --before TREE, the same runs on the code in TREE
   (PYTHONPATH), e.g. `git archive <commit> | tar -x -C TREE`.
2. Data-driven passes on the same 640x640 pages: every pass at its defaults plus the variants that
   collect activations (percentile / entropy calibration, APoZ, ThiNet, reconstruction, bias correction,
   bits: auto).
3. Pass x corpus model: every pass at its defaults after simplify + fold_batchnorm on the corpus
   inputs (`make corpus`), as bench_corpus.py runs them.

Each child gets an address-space limit (RLIMIT_AS, --limit, 12 GB by default) so a runaway cell fails
on its own instead of taking the machine down; peak RSS is the child's ru_maxrss (os.wait4), latency
measurement off (--no-measure: memory only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from machine import describe  # noqa: E402

from edgeopt.passes import pass_names  # noqa: E402
from edgeopt.zoo.corpus import BY_KEY, MODELS, data_path, fetch, model_path, write_inputs  # noqa: E402

CACHE = ROOT / "build" / "corpus"
WORK = ROOT / "build" / "bench_memory"
PREFIX = ["simplify", "fold_batchnorm"]
DEVICES = ["host", "myriadx"]
DET_SIZE, DET_CALIBRATION, DET_DATA = 640, 32, 4
GB = 1e9
TARGET_HEADLINE, TARGET_CELL = 4 * GB, 8 * GB  # issue 18's acceptance
VARIANTS = [  # passes that collect activations, beyond their defaults
    {"quantize_static": {"calibration": "percentile"}},
    {"quantize_static": {"calibration": "entropy"}},
    {"prune_channels": {"criterion": "apoz"}},
    {"prune_channels": {"criterion": "thinet"}},
    {"prune_channels": {"reconstruct": True}},
    {"quantize_weights": {"bias_correction": True}},
    {"quantize_weights": {"bits": "auto"}},
]


def run(recipe: dict, work: Path, limit: int, tree: str | None = None) -> dict:
    """One `edgeopt run` child under RLIMIT_AS: exit code, peak RSS, seconds, the last stage's summary."""
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out, err = work / "stdout.json", work / "stderr.txt"
    started = time.perf_counter()
    with out.open("w") as so, err.open("w") as se:
        child = subprocess.Popen([sys.executable, "-m", "edgeopt", "run", str(path), "--format", "json", "-q",
                                  "--no-measure"], stdout=so, stderr=se, cwd=tree or ROOT, env=env,
                                 preexec_fn=limited)  # cwd: `-m` puts it before PYTHONPATH
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    lines = err.read_text().strip().splitlines()
    row = {"rc": child.returncode, "peak": usage.ru_maxrss * 1024, "seconds": seconds,
           "message": lines[-1] if lines else "", "summary": ""}
    try:
        row["summary"] = json.loads(out.read_text())["stages"][-1].get("summary", "")
    except (json.JSONDecodeError, KeyError, IndexError):
        pass
    said = row["summary"] + " " + row["message"]
    row["allocation_failed"] = any(s in said for s in ("Failed to allocate", "bad_alloc", "out of memory",
                                                       "not enough memory"))
    return row


def pass_label(spec) -> str:
    if isinstance(spec, str):
        return spec
    (name, params), = spec.items()
    return f"{name} " + ", ".join(f"{k}: {v}" for k, v in params.items())


def det_pages() -> tuple[Path, Path, Path]:
    """32 calibration pages, 4 held-out pages and the same 32 as data, rendered at 640x640 (once)."""
    from edgeopt.zoo.corpus_inputs import ocr_page

    WORK.mkdir(parents=True, exist_ok=True)
    calib, data, data32 = (WORK / f"ppocr_det_{DET_SIZE}_{n}.npz" for n in ("calib32", "data4", "data32"))
    if not (calib.exists() and data.exists() and data32.exists()):
        pages = ocr_page(DET_CALIBRATION + DET_DATA, DET_SIZE, seed=3)
        np.savez(calib, x=pages[:DET_CALIBRATION])
        np.savez(data, x=pages[DET_CALIBRATION:])
        np.savez(data32, x=pages[:DET_CALIBRATION])
    return calib, data, data32


def det_recipe(passes: list, work: Path, calib: Path | None, data: Path) -> dict:
    recipe = {"model": str(model_path(BY_KEY["ppocr_det"], CACHE)), "output": str(work / "out.onnx"),
              "device": DEVICES, "data": str(data), "passes": passes}
    if calib is not None:
        recipe["calibration_data"] = str(calib)
    return recipe


def headline(limit: int, before: str | None, before_limit: int) -> list[dict]:
    calib, data, data32 = det_pages()
    cases = [("quantize_static, 32 calibration + 4 data pages", ["quantize_static"], calib, data),
             ("fuse_relu6 (lossless, the pipeline alone), 4 data pages", ["fuse_relu6"], None, data),
             ("fuse_relu6 (lossless, the pipeline alone), 32 data pages", ["fuse_relu6"], None, data32)]
    rows = []
    for tree, code in [(None, "this checkout")] + ([(before, f"before ({before})")] if before else []):
        for label, passes, c, d in cases:
            if tree and passes != ["quantize_static"]:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                row = run(det_recipe(passes, Path(tmp), c, d), Path(tmp), before_limit if tree else limit, tree)
            row.update(case=label, code=code)
            rows.append(row)
            print(f"headline {code}: {label}: rc={row['rc']} peak {row['peak'] / GB:.2f} GB "
                  f"{row['seconds']:.0f} s {row['summary'][:90]}", flush=True)
    return rows


def det_passes(limit: int, passes: list) -> list[dict]:
    calib, data, _ = det_pages()
    rows = []
    for spec in passes:
        with tempfile.TemporaryDirectory() as tmp:
            row = run(det_recipe(PREFIX + [spec], Path(tmp), calib, data), Path(tmp), limit)
        row.update(model="ppocr_det 640", pass_=pass_label(spec))
        rows.append(row)
        print(f"ppocr_det 640 {row['pass_']:40s} rc={row['rc']} peak {row['peak'] / GB:.2f} GB "
              f"{row['seconds']:.0f} s", flush=True)
    return rows


def corpus(limit: int, models: list[str], passes: list[str]) -> list[dict]:
    rows = []
    for model in [m for m in MODELS if m.key in models]:
        for name in passes:
            with tempfile.TemporaryDirectory() as tmp:
                recipe = {"model": str(model_path(model, CACHE)), "output": str(Path(tmp) / "out.onnx"),
                          "device": DEVICES, "data": str(data_path(model, CACHE)), "passes": PREFIX + [name]}
                row = run(recipe, Path(tmp), limit)
            row.update(model=model.key, pass_=name)
            rows.append(row)
            print(f"{model.key:16s} {name:18s} rc={row['rc']} peak {row['peak'] / GB:.2f} GB "
                  f"{row['seconds']:.0f} s", flush=True)
    return rows


def _gb(n) -> str:
    return f"{n / GB:.2f}"


def _outcome(row: dict) -> str:
    if row["rc"] == 0:
        return "ok" if not row["allocation_failed"] else "ran out of memory inside (pass left the model unchanged)"
    kind = {1: "check failed", 2: "does not apply / exit 2", 3: "FAILED"}.get(row["rc"], f"FAILED (signal)")
    return f"{kind} (exit {row['rc']})"


def _said(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def write(head: list[dict], det: list[dict], cells: list[dict], out: Path, argv: list[str], limit: int) -> None:
    lines = ["## Peak memory per pass (bench/bench_memory.py)", "",
             f"Machine: {describe()}  ",
             f"Command: `python bench/bench_memory.py {' '.join(argv)}`".rstrip() + "  ",
             f"Each cell: one `edgeopt run` child (`--no-measure`) under an address-space limit of {_gb(limit)} GB "
             "(RLIMIT_AS); peak is its ru_maxrss (os.wait4). Activations are collected in runs sized to "
             "ACTIVATION_BUDGET (edgeopt/graph/activations.py, 1 GiB).", ""]
    if head:
        lines += ["### Headline: PP-OCRv4 det at [1, 3, 640, 640]", "",
                  "The before rows run under their own, higher limit (--before-limit); a run that fails to "
                  "allocate there needed more than the limit.", "",
                  f"Acceptance: quantize_static with {DET_CALIBRATION} calibration samples under "
                  f"{_gb(TARGET_HEADLINE)} GB. `data` holds {DET_DATA} other pages: the pipeline verifies every "
                  "stage on all of `data` in one onnxruntime batch (verify/runtime.run_batched, up to 256 "
                  "samples), so 32 pages of `data` cost 4.8 GB before any pass runs (the last row).", "",
                  "| code | case | outcome | peak RSS GB | s | what the run said |", "|---|---|---|---:|---:|---|"]
        for r in head:
            lines.append(f"| {r['code']} | {r['case']} | {_outcome(r)} | {_gb(r['peak'])} | {r['seconds']:.0f} | "
                         f"{_said(r['summary'] or r['message'])} |")
        lines.append("")
    for title, rows in (("### Data-driven passes on PP-OCRv4 det at 640x640 (32 calibration + 4 data pages)", det),
                        ("### Pass x corpus model (corpus inputs, after simplify + fold_batchnorm)", cells)):
        if not rows:
            continue
        lines += [title, "", "| model | pass | outcome | peak RSS GB | s | what the run said |",
                  "|---|---|---|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['pass_']} | {_outcome(r)} | {_gb(r['peak'])} | {r['seconds']:.0f} | "
                         f"{_said(r['summary'] or r['message'])} |")
        worst = max(rows, key=lambda r: r["peak"])
        over = [r for r in rows if r["peak"] > TARGET_CELL]
        lines += ["", f"Largest: {worst['model']} x {worst['pass_']}, {_gb(worst['peak'])} GB; cells over "
                      f"{_gb(TARGET_CELL)} GB: {len(over)} of {len(rows)}; exit 3 or killed: "
                      f"{sum(1 for r in rows if r['rc'] not in (0, 1, 2))}.", ""]
    out.write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=[m.key for m in MODELS])
    parser.add_argument("--passes", nargs="*", default=[p for p in pass_names() if p not in PREFIX])
    parser.add_argument("--limit", type=float, default=12.0, help="RLIMIT_AS of each child, GB")
    parser.add_argument("--before", default=None, help="a checkout of older code: the headline on it too")
    parser.add_argument("--before-limit", type=float, default=15.0, help="RLIMIT_AS of the --before runs, GB")
    parser.add_argument("--skip-corpus", action="store_true")
    parser.add_argument("--skip-det", action="store_true", help="no 640x640 sections")
    parser.add_argument("--out", default=str(HERE / "RESULTS_memory.md"))
    args = parser.parse_args(argv)
    limit = int(args.limit * GB)
    fetch(CACHE)
    write_inputs(CACHE)
    head = det = cells = []
    if not args.skip_det:
        head = headline(limit, args.before, int(args.before_limit * GB))
        det = det_passes(limit, args.passes + [v for v in VARIANTS if next(iter(v)) in args.passes])
    if not args.skip_corpus:
        cells = corpus(limit, args.models, args.passes)
    write(head, det, cells, Path(args.out), argv, limit)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
