"""What a tune leaves in its output folder, and the tables it prints.

    tune.json          the document (CONTRACT keys below), also what --format json prints
    trials.csv         one row per finished trial: params, objective values, state, cache, error
    pareto/trial_NNN.yaml   each Pareto point as a self-contained recipe (`edgeopt run` reproduces it)

{"edgeopt_version", "kind": "tune", "recipe", "model", "study": {"name", "storage"},
 "objectives": [{"name", "direction"}], "baseline": {"values"}, "trials": [{"number", "state", "params",
 "values", "checks", "error", "seconds", "cached_stages", "recipe"}], "pareto", "chosen", "cache", "seconds"}
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import yaml

from edgeopt import __version__
from edgeopt.graph.io import write_atomic
from edgeopt.report.render import Column, Table
from edgeopt.report.units import fixed, plain
from edgeopt.tune.study import RESULT_ATTR, TuneSetup


def trial_records(trials, setup: TuneSetup) -> list[dict]:
    records = []
    for t in sorted(trials, key=lambda t: t.number):
        r = t.user_attrs[RESULT_ATTR]
        records.append({"number": t.number, "state": r["state"], "params": setup.space.applied(dict(t.params)), "values": r["values"],
                        "checks": r["checks"], "error": r["error"], "seconds": r["seconds"],
                        "cached_stages": r["cached_stages"], "recipe": None})
    return records


def dominates(a: dict, b: dict, objectives) -> bool:
    """a is no worse than b on every objective and better on one."""
    better = False
    for o in objectives:
        if o.better(b[o.name], a[o.name]):
            return False
        better = better or o.better(a[o.name], b[o.name])
    return better


def pareto_front(records: list[dict], objectives) -> list[int]:
    """Feasible complete trials no other one dominates; of equal points only the first trial is kept."""
    feasible = [r for r in records if r["state"] == "complete" and r["values"] is not None]
    front, seen = [], set()
    for r in feasible:
        point = tuple(r["values"][o.name] for o in objectives)
        if point in seen or any(dominates(q["values"], r["values"], objectives) for q in feasible):
            continue
        seen.add(point)
        front.append(r["number"])
    return front


def choose(records: list[dict], front: list[int], objectives) -> dict[str, int]:
    """Per objective, the Pareto point best on it (ties: best on the others in order)."""
    by_number = {r["number"]: r for r in records}
    chosen = {}
    for first in objectives:
        order = [first] + [o for o in objectives if o is not first]

        def key(n):
            return tuple(by_number[n]["values"][o.name] * (1 if o.direction == "minimize" else -1) for o in order)

        if front:
            chosen[first.name] = min(front, key=lambda n: (key(n), n))
    return chosen


def pareto_recipe(setup: TuneSetup, record: dict, folder: Path) -> str:
    """A self-contained recipe: paths relative to `folder`, the output next to it, no search block."""
    doc = setup.trial_doc(record["params"])
    for key in ("model", "data", "calibration_data"):
        if doc.get(key) is not None:
            # relative while the two share more than the root (a repo moved as a whole still works)
            if os.path.commonpath([doc[key], str(folder.resolve())]) != os.path.sep:
                doc[key] = os.path.relpath(doc[key], folder.resolve())
    doc["output"] = f"trial_{record['number']:03d}.onnx"
    figures = ", ".join(f"{name} {value:.6g}" for name, value in (record["values"] or {}).items())
    head = (f"# edgeopt tune: trial {record['number']} of {setup.recipe_path.name} (a Pareto point: {figures}).\n"
            f"# `edgeopt run` on this file reproduces these figures.\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def build_doc(setup: TuneSetup, records: list[dict], baseline: dict | None, cache: dict, seconds: float) -> dict:
    front = pareto_front(records, setup.objectives)
    for r in records:
        if r["number"] in front:
            r["recipe"] = f"pareto/trial_{r['number']:03d}.yaml"
    return {
        "edgeopt_version": __version__,
        "kind": "tune",
        "recipe": str(setup.recipe_path),
        "model": str(setup.recipe.model),
        "study": {"name": setup.study_name, "storage": setup.storage},
        "objectives": [{"name": o.name, "direction": o.direction} for o in setup.objectives],
        "baseline": {"values": (baseline or {}).get("values"), "state": (baseline or {}).get("state"),
                     "error": (baseline or {}).get("error")},
        "trials": records,
        "pareto": front,
        "chosen": choose(records, front, setup.objectives),
        "cache": cache,
        "seconds": seconds,
    }


def write_outputs(setup: TuneSetup, doc: dict) -> None:
    out = setup.out
    folder = out / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    keep = set()
    for r in doc["trials"]:
        if r["recipe"]:
            path = out / r["recipe"]
            write_atomic(path, pareto_recipe(setup, r, folder).encode())
            keep.add(path.name)
    for stale in folder.glob("trial_*.yaml"):  # points a resumed study pushed off the front
        if stale.name not in keep:
            stale.unlink()
    write_atomic(out / "trials.csv", trials_csv(setup, doc).encode())
    write_atomic(out / "tune.json", (json.dumps(doc, indent=2) + "\n").encode())


def param_keys(setup: TuneSetup) -> list[str]:
    return [d.key for d in setup.space.dims]


def trials_csv(setup: TuneSetup, doc: dict) -> str:
    names = [o.name for o in setup.objectives]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", *param_keys(setup), *names, "pareto", "cached_stages", "seconds",
                     "failed_checks", "error", "recipe"])
    for r in doc["trials"]:
        values = r["values"] or {}
        failed = ";".join(c["name"] for c in r["checks"] if not c["ok"])
        writer.writerow([r["number"], r["state"], *("" if r["params"].get(k) is None else r["params"][k]
                                                     for k in param_keys(setup)),
                         *("" if values.get(n) is None else values[n] for n in names),
                         "yes" if r["number"] in doc["pareto"] else "", r["cached_stages"], r["seconds"],
                         failed, r["error"] or "", r["recipe"] or ""])
    return buffer.getvalue()


def _value_fmt(name: str):
    return fixed(4) if name == "accuracy" else plain


def front_tables(setup: TuneSetup, doc: dict) -> list[Table]:
    by_number = {r["number"]: r for r in doc["trials"]}
    columns = [Column("number", "trial")]
    columns += [Column(k, k.removeprefix("passes."), justify="left") for k in param_keys(setup)]
    columns += [Column(o.name, f"{o.name} ({'min' if o.direction == 'minimize' else 'max'})", _value_fmt(o.name))
                for o in setup.objectives]
    columns += [Column("cached_stages", "cached", priority=2), Column("seconds", "s", fixed(1), priority=3)]
    rows = []
    for n in sorted(doc["pareto"], key=lambda n: tuple(by_number[n]["values"][o.name] for o in setup.objectives)):
        r = by_number[n]
        rows.append({"number": n, **{k: r["params"].get(k, "-") for k in param_keys(setup)}, **r["values"],
                     "cached_stages": r["cached_stages"], "seconds": r["seconds"]})
    states = [r["state"] for r in doc["trials"]]
    title = (f"Pareto front: {len(doc['pareto'])} of {len(states)} trials ({states.count('complete')} feasible, "
             f"{states.count('infeasible')} infeasible, {states.count('failed')} failed)")
    footer = []
    for name, n in doc["chosen"].items():
        footer.append(f"  best {name}: trial {n} ({by_number[n]['recipe']})")
    base = (doc["baseline"] or {}).get("values")
    if base:
        better = [n for n in doc["pareto"] if dominates(by_number[n]["values"], base, setup.objectives)]
        figures = ", ".join(f"{k} {v:.6g}" for k, v in base.items())
        footer.append(f"  the recipe as written: {figures}; "
                      + (f"dominated by trial{'s' if len(better) > 1 else ''} {', '.join(map(str, better))}"
                         if better else "no trial dominates it"))
    footer.append(f"  stage cache this run: {doc['cache']['hits']} hits, {doc['cache']['misses']} misses; "
                  f"{doc['seconds']:.1f} s; study {doc['study']['name']} in {doc['study']['storage']}")
    return [Table(title=title, columns=columns, rows=rows, footer=footer)]
