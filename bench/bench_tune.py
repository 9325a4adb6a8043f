"""edgeopt tune on the digits MobileNet: 40 trials on 2 workers, the same tune again on the first one's stage
cache, every Pareto recipe re-run with `edgeopt run`, and the front against recipes/demo.yaml.

    .venv/bin/python bench/bench_tune.py              # ~10 min on 2 shared cores
    .venv/bin/python bench/bench_tune.py --trials 12  # a quicker look

Prints the tables and writes bench/RESULTS_tune.md. Everything runs through the `edgeopt` command, as a user
would; build/bench_tune/ holds the studies and the Pareto recipes (never committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

EDGEOPT = [sys.executable, "-m", "edgeopt"]
RECIPE = "recipes/tune_mobilenet_digits.yaml"
WORK = REPO / "build" / "bench_tune"
LATENCY, ACCURACY = "est_latency_ms@myriadx", "accuracy"


def edgeopt(*args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    proc = subprocess.run([*EDGEOPT, *args, "--format", "json", "-q"], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"edgeopt {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout), seconds


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def final_values(run: dict) -> dict:
    last = run["stages"][-1]
    return {LATENCY: last["devices"]["myriadx"]["est_latency_ms"], ACCURACY: last["fidelity"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    first_dir, second_dir = WORK / "run1", WORK / "run2"
    common = ["tune", RECIPE, "--trials", str(args.trials), "--seed", "0", "--jobs", str(args.jobs)]
    first, first_s = edgeopt(*common, "-o", str(first_dir.relative_to(REPO)))
    print(f"first tune: {first_s:.1f} s, cache {first['cache']}", flush=True)
    # The same tune in a fresh study, reading the first one's stage cache: every pass must be a hit.
    second, second_s = edgeopt(*common, "-o", str(second_dir.relative_to(REPO)),
                               "--cache-dir", str((first_dir / "cache").relative_to(REPO)))
    print(f"second tune: {second_s:.1f} s, cache {second['cache']}", flush=True)
    same_trials = [t["params"] for t in first["trials"]] == [t["params"] for t in second["trials"]]
    pass_work = second["cache"]["misses"]  # a miss is a pass applied

    by_number = {t["number"]: t for t in first["trials"]}
    front = sorted(first["pareto"], key=lambda n: by_number[n]["values"][LATENCY])
    rows, reproduced = [], 0
    for n in front:
        trial = by_number[n]
        run, _ = edgeopt("run", str((first_dir / trial["recipe"]).relative_to(REPO)), "--no-measure")
        again = final_values(run)
        same = again == trial["values"]
        reproduced += same
        p = trial["params"]
        rows.append([n, p.get("passes.3.criterion", "-"), p.get("passes.3.ratio", "-"), p.get("passes.4", "-"),
                     p.get("passes.5.bits", "-"), f"{trial['values'][LATENCY]:.5f}", f"{trial['values'][ACCURACY]:.4f}",
                     "yes" if same else f"no ({again})"])

    demo, _ = edgeopt("run", "recipes/demo.yaml", "--no-measure", "-o", str((WORK / "demo.onnx").relative_to(REPO)))
    demo_values = final_values(demo)
    dominating = [n for n in front if by_number[n]["values"][LATENCY] < demo_values[LATENCY]
                  and by_number[n]["values"][ACCURACY] >= demo_values[ACCURACY]]

    states = [t["state"] for t in first["trials"]]
    seconds = [t["seconds"] for t in first["trials"]]
    front_table = table(["trial", "criterion", "prune ratio", "split (passes.4)", "bits", "est ms myriadx",
                         "accuracy", "edgeopt run reproduces"], rows)
    timing_table = table(
        ["run", "wall s", "trials", "stage cache hits", "misses (pass work)", "trial s median / max"],
        [["first tune (empty cache)", f"{first_s:.1f}", len(first["trials"]), first["cache"]["hits"],
          first["cache"]["misses"], f"{sorted(seconds)[len(seconds) // 2]:.1f} / {max(seconds):.1f}"],
         ["same tune, fresh study, first one's cache", f"{second_s:.1f}", len(second["trials"]),
          second["cache"]["hits"], second["cache"]["misses"],
          f"{sorted(t['seconds'] for t in second['trials'])[len(second['trials']) // 2]:.1f} / "
          f"{max(t['seconds'] for t in second['trials']):.1f}"]])
    verdict = (f"Trial{'s' if len(dominating) > 1 else ''} {', '.join(map(str, dominating))} dominate"
               f"{'' if len(dominating) > 1 else 's'} the hand-written demo recipe "
               f"(est {demo_values[LATENCY]:.5f} ms, accuracy {demo_values[ACCURACY]:.4f}): faster at no lower accuracy."
               if dominating else
               f"No Pareto point dominates the demo recipe (est {demo_values[LATENCY]:.5f} ms, accuracy "
               f"{demo_values[ACCURACY]:.4f}).")
    command = " ".join(["edgeopt", *common, "-o", str(first_dir.relative_to(REPO))])
    text = f"""# edgeopt tune: digits MobileNet, est. latency on Myriad X vs held-out accuracy

Machine: {describe()}

Command: `{command}` (then the same with `-o build/bench_tune/run2 --cache-dir build/bench_tune/run1/cache`),
by `.venv/bin/python bench/bench_tune.py`. Recipe: `{RECIPE}` (the demo chain plus a split_spatial slot;
search: prune ratio 0.1-0.5 step 0.05 x criterion l1/thinet x split on/off x int8/int4 weights; checks
min_cosine 0.95, max_accuracy_drop 0.02, max_weight_bytes 100000 are constraints). Accuracy is on the 540
held-out digits of `digits_test.npz`; reconstruction and thinet fit on `digits_calib.npz`.

## Pareto front: {len(front)} points of {len(states)} trials ({states.count('complete')} feasible, {states.count('infeasible')} infeasible, {states.count('failed')} failed)

{front_table}

Each Pareto recipe (`build/bench_tune/run1/pareto/trial_NNN.yaml`) was run with `edgeopt run`:
{reproduced} of {len(front)} reproduce the tune's figures exactly.

{verdict}

## Timings and the stage cache

{timing_table}

The second tune asks the same {len(second['trials'])} trials (same seed and workers: results are told in trial
order, so the sampler sees the same history): {"same parameters, trial for trial" if same_trials else "the parameters DIFFER"}.
Pass work in the second run: {pass_work} pass applications (every stage read from the cache); what remains
of a trial's time is verification and profiling of every stage, which a trial always does.
"""
    (HERE / "RESULTS_tune.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
