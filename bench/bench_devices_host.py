"""The host profile against onnxruntime here: `edgeopt calibrate host`, then every held-out model.

Called by bench/bench_devices.py --host. The calibration fits on its own micro-benchmarks and the zoo
builders (MobileNetV2 x0.5@160 / x1.0@192, ResNet-18 @128 / @192, plain conv stacks); it is scored on
the exported architectures (build/device_truth/onnx, less mobilenet_v2 and resnet18, the builders'
architectures) and the corpus (build/corpus, with its inputs). Measured: `edgeopt profile --device
host` (onnxruntime, one thread, process CPU time), three rounds interleaved across the models, median.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGEOPT = [sys.executable, "-m", "edgeopt"]
ROUNDS = 3


def _models() -> list[tuple[str, Path, Path | None]]:
    sys.path.insert(0, str(ROOT))
    from edgeopt.zoo.corpus import MODELS, data_path, model_path

    out = [(p.stem, p, None) for p in sorted((ROOT / "build" / "device_truth" / "onnx").glob("*.onnx"))
           if not p.stem.startswith(("mobilenet_v2", "resnet18"))]
    cache = ROOT / "build" / "corpus"
    for m in MODELS:
        path, data = model_path(m, cache), data_path(m, cache)
        if path.exists():
            out.append((m.key, path, data if data.exists() else None))
    return out


def host_section() -> list[str]:
    env = dict(os.environ, EDGEOPT_CACHE_DIR=tempfile.mkdtemp(prefix="edgeopt-host-"))
    cal = subprocess.run(EDGEOPT + ["calibrate", "host", "--format", "json", "--quiet"], env=env,
                         capture_output=True, text=True, check=True)
    fit = json.loads(cal.stdout).get("network_fit", {}).get("error", {})
    models = _models()
    measured = {name: [] for name, _, _ in models}
    predicted = {}
    for _ in range(ROUNDS):  # interleaved: each round visits every model once
        for name, path, data in models:
            cmd = EDGEOPT + ["profile", str(path), "--device", "host", "--format", "json"]
            if data is not None:
                cmd += ["--data", str(data)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                continue
            t = json.loads(res.stdout)["totals"]
            if t.get("measured_latency_ms"):
                measured[name].append(t["measured_latency_ms"])
                predicted[name] = t["est_latency_ms"]
    rows = [(n, float(np.median(v)), predicted[n]) for n, v in measured.items() if v and predicted.get(n)]
    within = sum(1 for _, m, p in rows if abs(p - m) / m <= 0.20)
    lines = ["## Host: `edgeopt calibrate host`, then held-out models", "",
             f"Calibration fit (its own training networks): {fit.get('rows', '?')} networks, median error "
             f"{fit.get('median_error', float('nan')):.0%}.", "",
             f"**{within} of {len(rows)} held-out models ({within / max(len(rows), 1):.0%}) within ±20 %** of onnxruntime "
             f"measured here (1 thread, median of {ROUNDS} interleaved rounds).", "",
             "| model | measured ms | predicted ms | predicted / measured |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {m:.3f} | {p:.3f} | {p / m:.2f} |" for n, m, p in rows]
    return lines + [""]
