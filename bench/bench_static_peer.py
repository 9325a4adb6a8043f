"""Static int8 on YOLOv8n: edgeopt's quantize_static against the best peer pipeline and fp32, side by side.

    .venv/bin/python bench/bench_static_peer.py [--rounds 20] [--cache build/corpus]

Peer: onnxsim with the input fixed at [1, 3, 320, 320], then onnxruntime.quantization.quantize_static
(QDQ, per-channel int8 weights, uint8 activations, MinMax), calibrated on the same rendered scenes.
Ours: `edgeopt run` with input_shapes and calibration_data and quantize_static's defaults (auto).
All three run in this process at 1 intra-op thread, interleaved (each round runs every model in
turn, in a rotated order), so load from other processes hits them alike; figures are medians over
all runs and the median of the per-round ratios. Writes bench/RESULTS_static_peer.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe  # noqa: E402

from edgeopt.verify.fidelity import compare  # noqa: E402
from edgeopt.verify.runtime import make_session  # noqa: E402
from edgeopt.zoo.corpus_inputs import scene  # noqa: E402

SHAPE = [1, 3, 320, 320]
CALIBRATION, EVAL = 32, 8


def peer(model_path: Path, calib: np.ndarray, work: Path) -> Path:
    import onnxsim
    from onnxruntime import quantization as oq

    fixed, ok = onnxsim.simplify(onnx.load(str(model_path)), overwrite_input_shapes={"images": SHAPE})
    assert ok, "onnxsim could not validate the fixed model"
    onnx.save(fixed, str(work / "peer_fp32.onnx"))

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 1
            return {"images": calib[self.i - 1:self.i]}

    out = work / "peer_int8.onnx"
    oq.quantize_static(str(work / "peer_fp32.onnx"), str(out), Reader(), quant_format=oq.QuantFormat.QDQ,
                       per_channel=True, activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                       calibrate_method=oq.CalibrationMethod.MinMax)
    return out


def ours(model_path: Path, work: Path) -> tuple[Path, str]:
    recipe = work / "ours.yaml"
    recipe.write_text(f"model: {model_path}\noutput: {work / 'ours_int8.onnx'}\n"
                      f"input_shapes: {{images: {SHAPE}}}\ndata: {work / 'eval.npz'}\n"
                      f"calibration_data: {work / 'calib.npz'}\npasses: [quantize_static]\n")
    run = subprocess.run([str(ROOT / ".venv/bin/edgeopt"), "run", str(recipe), "--no-measure"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"edgeopt run failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    summary = next((line for line in run.stderr.splitlines() if "quantize_static:" in line), "")
    return work / "ours_int8.onnx", summary.split("quantize_static:", 1)[-1].strip()


def latency(models: dict[str, onnx.ModelProto], feed: dict, rounds: int, runs: int = 3):
    sessions = {k: make_session(m, threads=1) for k, m in models.items()}
    for s in sessions.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    per_round: list[dict[str, float]] = []
    names = list(sessions)
    for r in range(rounds):
        this = {}
        for k in names[r % len(names):] + names[:r % len(names)]:
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sessions[k].run(None, feed)
                samples.append((time.perf_counter() - t0) * 1e3)
            times[k] += samples
            this[k] = statistics.median(samples)
        per_round.append(this)
    return {k: statistics.median(v) for k, v in times.items()}, per_round


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=ROOT / "build/corpus")
    args = ap.parse_args()
    model_path = (args.cache / "models" / "320n.onnx").resolve()
    if not model_path.exists():
        raise SystemExit(f"{model_path}: not found; run `make corpus` first")
    calib, evals = scene(CALIBRATION, 320, seed=11), scene(EVAL, 320, seed=12)
    with tempfile.TemporaryDirectory(prefix="edgeopt-peer-") as tmp:
        work = Path(tmp)
        np.savez(work / "calib.npz", images=calib)
        np.savez(work / "eval.npz", images=evals)
        t0 = time.time()
        peer_path = peer(model_path, calib, work)
        t_peer = time.time() - t0
        t0 = time.time()
        ours_path, summary = ours(model_path, work)
        t_ours = time.time() - t0
        models = {"fp32": onnx.load(str(model_path)), "peer int8": onnx.load(str(peer_path)),
                  "edgeopt int8": onnx.load(str(ours_path))}
    ref_s = make_session(models["fp32"], threads=1)
    ref = np.concatenate([ref_s.run(None, {"images": evals[i:i + 1]})[0] for i in range(EVAL)])
    cos = {}
    for k, m in models.items():
        s = make_session(m, threads=1)
        got = np.concatenate([s.run(None, {"images": evals[i:i + 1]})[0] for i in range(EVAL)])
        cos[k] = compare([ref], [got])["cosine"]
    med, per_round = latency(models, {"images": evals[:1]}, args.rounds)
    ratio = {k: statistics.median(r["fp32"] / r[k] for r in per_round) for k in models}
    vs_peer = statistics.median(r["peer int8"] / r["edgeopt int8"] for r in per_round)

    lines = ["# Static int8 on YOLOv8n: edgeopt vs the best peer pipeline vs fp32", "",
             f"Machine: {describe()}", "",
             f"Model: nudenet 3.4.2 `320n.onnx` (YOLOv8n, opset 17) at {SHAPE}; calibration {CALIBRATION} "
             f"rendered scenes (edgeopt.zoo.corpus_inputs.scene, seed 11), cosine on {EVAL} others (seed 12) "
             "against fp32. Latency: 1 intra-op thread, batch 1, "
             f"{args.rounds} interleaved rounds x 3 runs per model, rotated order; median of all runs and "
             "median of the per-round speed-ups.", "",
             "| pipeline | median ms | speed-up vs fp32 | output cosine | quantize time s |",
             "|---|---:|---:|---:|---:|"]
    for k, t in (("fp32", None), ("peer int8", t_peer), ("edgeopt int8", t_ours)):
        lines.append(f"| {k} | {med[k]:.2f} | {ratio[k]:.2f}x | {cos[k]:.5f} | "
                     f"{'-' if t is None else f'{t:.1f}'} |")
    lines += ["", f"edgeopt int8 vs peer int8 (median per-round ratio): {vs_peer:.2f}x", "",
              "Peer: onnxsim (input fixed) -> onnxruntime.quantization.quantize_static(QDQ, per_channel=True, "
              "QUInt8 activations, QInt8 weights, MinMax, reduce_range=False).",
              "edgeopt: `edgeopt run` (input_shapes, calibration_data, passes: [quantize_static]) with its "
              "defaults: auto mode (fidelity budget, host latency gate), reduce_range=True (7-bit weights, safe "
              "on x86 without VNNI), which the quantize time includes.", "",
              f"edgeopt's summary: {summary}", ""]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "RESULTS_static_peer.md").write_text(text)


if __name__ == "__main__":
    main()
