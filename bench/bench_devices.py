"""Device estimates against published measurements -> bench/RESULTS_devices.md.

    .venv/bin/python tools/fit_devices.py          # fit the built-ins (needs `make device-exports`)
    .venv/bin/python bench/bench_devices.py [--host]

Reads what tools/fit_devices.py wrote into each built-in profile (every published row with its
in-sample and leave-one-architecture-out prediction) and summarises it: overall, per device family,
per profile (with the Kendall tau of the architecture ranking), and every row. `--host` also measures
onnxruntime (1 thread, medians of interleaved runs) on the exported architectures and the corpus, fits
the host profile on half the models and scores it on the other half.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe  # noqa: E402

from edgeopt.devices import device_names, load_device  # noqa: E402
from edgeopt.devices.fitting import error_stats  # noqa: E402
from edgeopt.devices.validation import kendall_tau, per_arch  # noqa: E402

FAMILIES = ("coral", "jetson", "rpi", "kirin970", "myriad", "mali", "snapdragon")


def family(device_key: str) -> str:
    return next((f for f in FAMILIES if device_key.startswith(f)), device_key)


def _pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def collect():
    profiles = []
    for name in device_names():
        d = load_device(name)
        rows = (d.fit or {}).get("rows") or []
        if name == "host":
            continue
        profiles.append((d, rows))
    return profiles


def summary_line(label, rows, key):
    m = [r["measured_ms"] for r in rows if r.get(key) is not None]
    p = [r[key] for r in rows if r.get(key) is not None]
    s = error_stats(m, p)
    return f"| {label} | {s['rows']} | {_pct(s.get('within_25'))} | {_pct(s.get('median_error'))} | {_pct(s.get('worst_error'))} |"


def write(out: Path, host_section: list[str]):
    profiles = collect()
    all_rows = [r for _, rows in profiles for r in rows]
    lines = ["# Device estimates against published measurements", "",
             f"Machine: {describe()}", "",
             "Rows: bench/device_truth/published.csv (every row with an `arch`, each with its source). Each built-in",
             "profile (one device + runtime + precision + threads) is fitted by tools/fit_devices.py to the rows that",
             "name it; *LOAO* predicts each row from a fit that never saw its architecture (the honest proxy for a",
             "new model). Error = |predicted - published| / published.", "",
             "## Overall", "", "| rows | n | within ±25 % | median error | worst error |", "|---|---:|---:|---:|---:|",
             summary_line("in sample", all_rows, "predicted_ms"), summary_line("leave-one-architecture-out", all_rows, "loao_ms"),
             "", "## Per device family (LOAO)", "", "| family | n | within ±25 % | median error | worst error |",
             "|---|---:|---:|---:|---:|"]
    for fam in FAMILIES:
        rows = [r for d, rs in profiles if family(d.device_key) == fam for r in rs]
        if rows:
            lines.append(summary_line(fam, rows, "loao_ms"))
    lines += ["", "## Per profile", "",
              "| profile | rows | archs | in-sample ±25 % | LOAO ±25 % | LOAO median | LOAO worst | Kendall tau (LOAO, >= 5 archs) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    taus = []
    for d, rows in profiles:
        if not rows:
            lines.append(f"| {d.name} | 0 | 0 | unvalidated | | | | |")
            continue
        ins = error_stats([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows])
        held = [r for r in rows if r.get("loao_ms") is not None]
        lo = error_stats([r["measured_ms"] for r in held], [r["loao_ms"] for r in held])
        archs = {r["model"] for r in rows}
        tau = None
        if len(archs) >= 5 and held:
            from edgeopt.devices.measurements import Measurement
            ms = [Measurement(latency_ms=r["measured_ms"], arch=r["model"]) for r in held]
            meas, pred = per_arch(ms, [r["loao_ms"] for r in held])
            tau = kendall_tau(meas, pred)
            taus.append((d.name, tau))
        lines.append(f"| {d.name} | {len(rows)} | {len(archs)} | {_pct(ins['within_25'])} | {_pct(lo.get('within_25'))} "
                     f"| {_pct(lo.get('median_error'))} | {_pct(lo.get('worst_error'))} | {'-' if tau is None else f'{tau:.2f}'} |")
    ok = [n for n, t in taus if t is not None and t >= 0.8]
    lines += ["", f"Kendall tau >= 0.8 on {len(ok)} of {len(taus)} profiles with 5 or more architectures.", "",
              *host_section, "## Every row", "", "| profile | model | published ms | in-sample ms | LOAO ms | LOAO / published |",
              "|---|---|---:|---:|---:|---:|"]
    for d, rows in profiles:
        for r in rows:
            ratio = "-" if r.get("loao_ms") is None else f"{r['loao_ms'] / r['measured_ms']:.2f}"
            loao = "-" if r.get("loao_ms") is None else f"{r['loao_ms']:.2f}"
            lines.append(f"| {d.name} | {r['model']} | {r['measured_ms']:g} | {r['predicted_ms']:.2f} | {loao} | {ratio} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:40]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", action="store_true", help="also measure and score the host profile")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_devices.md"))
    args = ap.parse_args()
    host_section = []
    if args.host:
        from bench_devices_host import host_section as run_host

        host_section = run_host()
    write(Path(args.out), host_section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
