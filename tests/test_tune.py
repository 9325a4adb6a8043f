"""edgeopt tune: the search block, the study, the front, Pareto recipes that reproduce, the stage cache."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, tiny_classifier
from edgeopt.cli.main import cli
from edgeopt.tune.objectives import parse_objective
from edgeopt.tune.outputs import dominates
from edgeopt.tune.space import parse_search

pytestmark = pytest.mark.xdist_group("tune")  # one worker: the module's tunes share one study folder

OBJECTIVES = ["est_latency_ms@myriadx", "cosine"]


def make_inputs(folder: Path) -> None:
    model = tiny_classifier()
    onnx.save(model, folder / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    labels = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0].argmax(1)
    np.savez(folder / "tiny.npz", input=x, labels=labels)
    np.savez(folder / "nolabels.npz", input=x)


def recipe_doc(**search) -> dict:
    return {"model": "tiny.onnx", "output": "out.onnx", "device": "myriadx", "data": "tiny.npz",
            "passes": ["fold_batchnorm", {"prune_channels": {"ratio": 0.25}},
                       {"quantize_weights": {"bits": 8, "min_elements": 16}}],
            "checks": {"min_cosine": 0.985},
            "search": search or {"passes.1.ratio": {"low": 0.1, "high": 0.7, "step": 0.1},
                                 "passes.2.bits": [4, 8], "objectives": OBJECTIVES}}


def write(folder: Path, doc: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tune(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["tune", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune")
    make_inputs(path)
    return path


@pytest.fixture(scope="module")
def first(folder):
    """8 trials, seed 0, in process; the document it printed."""
    recipe = write(folder, recipe_doc())
    code, out, err = tune(str(recipe), "--trials", "8", "--seed", "0", "--jobs", "1", "-o", str(folder / "out"),
                          "--format", "json", "-q")
    assert code == 0, err
    return json.loads(out)


# --- the search block -----------------------------------------------------------------------------

@pytest.mark.parametrize("search, message", [
    ({"passes.7.ratio": [0.1]}, "search.passes.7.ratio: the recipe has 3 passes"),
    ({"passes.1.ratoi": [0.1]}, "no candidate pass at passes.1 (prune_channels) has a parameter 'ratoi'; did you mean 'ratio'?"),
    ({"passes.1.ratio": {"low": 0.5, "high": 0.2}}, "search.passes.1.ratio: low (0.5) must be below high (0.2)"),
    ({"passes.1.ratio": {"low": 0.1, "high": 1.0}}, "search.passes.1.ratio: prune_channels.ratio: must be in [0, 1), got 1.0"),
    ({"passes.1.ratio": {"low": 0.1}}, "a range needs low and high"),
    ({"passes.2.bits": []}, "an empty list of choices"),
    ({"passes.2": ["quantize_weigths", None]}, "unknown pass 'quantize_weigths'; did you mean 'quantize_weights'?"),
    ({"ratio": [0.1]}, "search.ratio: unknown key"),
    ({"passes.1.ratio": [0.2], "objectives": ["latency"]}, "search.objectives: unknown objective 'latency'"),
    ({"passes.1.ratio": [0.2], "objectives": ["est_latency_ms@nodevice"]}, "unknown device 'nodevice'"),
    ({"passes.1.ratio": [0.2], "sampler": "cmaes"}, "search.sampler: 'cmaes' is not one of tpe, nsga2, random"),
    ({"objectives": OBJECTIVES}, "search: names no recipe value to vary"),
    ({"passes.2.split_spatial.rank": [1]}, "'split_spatial' is never the pass at passes.2"),
])
def test_bad_search_block_exits_2_with_one_line(folder, tmp_path, search, message):
    recipe = write(folder, recipe_doc(**search), "bad.yaml")
    code, out, err = tune(str(recipe), "--trials", "1", "-o", str(tmp_path))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(recipe) in err and message in err, err


def test_no_search_block_exits_2(folder, tmp_path):
    doc = recipe_doc()
    del doc["search"]
    code, _, err = tune(str(write(folder, doc, "plain.yaml")), "-o", str(tmp_path))
    assert code == 2 and "no `search:` block" in err and len(err.strip().splitlines()) == 1


def test_swap_drop_and_conditional_params(folder):
    """passes.N choices swap or drop the pass; passes.N.param applies only where the chosen pass has it."""
    doc = recipe_doc(**{"passes.1": ["prune_channels", {"sparsify": {"sparsity": 0.5}}, None],
                        "passes.1.ratio": [0.1, 0.3],  # prune_channels has `ratio`, sparsify has not
                        "passes.1.sparsify.sparsity": [0.2, 0.6],
                        "passes.2.bits": [4]})
    space = parse_search(doc, "r.yaml")
    assert [d.key for d in space.dims] == ["passes.1", "passes.1.ratio", "passes.1.sparsify.sparsity",
                                           "passes.2.bits"]
    kept = space.apply(doc, {"passes.1": "prune_channels", "passes.1.ratio": 0.3, "passes.2.bits": 4})
    assert kept["passes"] == ["fold_batchnorm", {"prune_channels": {"ratio": 0.3}},
                              {"quantize_weights": {"bits": 4, "min_elements": 16}}]
    assert "search" not in kept
    swapped = space.apply(doc, {"passes.1": "sparsify#1", "passes.1.sparsify.sparsity": 0.2, "passes.2.bits": 4})
    assert swapped["passes"][1] == {"sparsify": {"sparsity": 0.2}}
    dropped = space.apply(doc, {"passes.1": "drop", "passes.2.bits": 4})
    assert dropped["passes"] == ["fold_batchnorm", {"quantize_weights": {"bits": 4, "min_elements": 16}}]
    # define-by-run: a dropped pass's parameters are not sampled, nor a parameter the chosen pass lacks
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        params = space.suggest(study.ask())
        seen.add(tuple(sorted(params)))
        expected = {"drop": set(), "prune_channels": {"passes.1.ratio"},
                    "sparsify#1": {"passes.1.sparsify.sparsity"}}[params["passes.1"]]
        assert set(params) == {"passes.1", "passes.2.bits"} | expected
    assert len(seen) == 3


def test_objectives_directions_and_accuracy_fallback(folder, tmp_path):
    assert parse_objective("accuracy", "r").direction == "maximize"
    assert parse_objective("est_latency_ms@rpi3", "r").device_name == "rpi3"
    assert parse_objective("weight_bytes", "r").direction == "minimize"
    doc = recipe_doc(**{"passes.1.ratio": [0.2], "objectives": ["weight_bytes", "accuracy"]})
    doc["data"] = "nolabels.npz"
    code, out, err = tune(str(write(folder, doc, "nolabels.yaml")), "--trials", "1", "--jobs", "1",
                          "-o", str(tmp_path), "--format", "json")
    assert code == 0, err
    assert "objective accuracy needs `data:` with `labels`" in err and "tuning cosine" in err
    assert [o["name"] for o in json.loads(out)["objectives"]] == ["weight_bytes", "cosine"]


# --- the study, the front, the recipes ------------------------------------------------------------

def test_trials_recorded_in_the_sqlite_study(first, folder):
    assert first["kind"] == "tune"
    assert first["objectives"] == [{"name": "est_latency_ms@myriadx", "direction": "minimize"},
                                   {"name": "cosine", "direction": "maximize"}]
    study = optuna.load_study(study_name=first["study"]["name"], storage=first["study"]["storage"])
    assert first["study"]["storage"] == f"sqlite:///{(folder / 'out' / 'study.db').resolve()}"
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 8 == len(first["trials"])
    for record, trial in zip(first["trials"], sorted(finished, key=lambda t: t.number)):
        assert record["number"] == trial.number
        assert record["params"]["passes.2.bits"] == trial.params["passes.2.bits"]
        if record["state"] != "failed":
            assert list(trial.values) == [record["values"][o] for o in OBJECTIVES]
    baseline = first["baseline"]["values"]
    assert baseline["cosine"] > 0.99 and baseline["est_latency_ms@myriadx"] > 0


def test_pareto_front_is_non_dominated_and_complete(first):
    feasible = [t for t in first["trials"] if t["state"] == "complete"]
    front = [t for t in first["trials"] if t["number"] in first["pareto"]]
    assert len(front) >= 2
    objectives = [parse_objective(o, "r") for o in OBJECTIVES]
    for point in front:
        assert not any(dominates(other["values"], point["values"], objectives) for other in feasible)
    for t in feasible:  # every feasible trial off the front is dominated by (or equal to) a front point
        if t["number"] not in first["pareto"]:
            assert any(dominates(p["values"], t["values"], objectives) or p["values"] == t["values"] for p in front)
    best_latency = min(t["values"]["est_latency_ms@myriadx"] for t in feasible)
    best_cosine = max(t["values"]["cosine"] for t in feasible)
    by_number = {t["number"]: t for t in first["trials"]}
    assert by_number[first["chosen"]["est_latency_ms@myriadx"]]["values"]["est_latency_ms@myriadx"] == best_latency
    assert by_number[first["chosen"]["cosine"]]["values"]["cosine"] == best_cosine


def test_infeasible_trials_fail_the_checks_and_stay_off_the_front(first):
    infeasible = [t for t in first["trials"] if t["state"] == "infeasible"]
    assert infeasible, [t["values"] for t in first["trials"]]
    for t in infeasible:
        assert t["values"]["cosine"] < 0.985
        assert [c["name"] for c in t["checks"] if not c["ok"]] == ["min_cosine"]
        assert "check min_cosine failed" in t["error"]
        assert t["number"] not in first["pareto"] and t["recipe"] is None


def test_outputs_csv_and_pareto_recipes_reproduce_with_run(first, folder):
    out = folder / "out"
    assert json.loads((out / "tune.json").read_text())["pareto"] == first["pareto"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [t["number"] for t in first["trials"]]
    assert {r["state"] for r in rows} <= {"complete", "infeasible", "failed"}
    assert sorted(p.name for p in (out / "pareto").glob("*.yaml")) == sorted(
        f"trial_{n:03d}.yaml" for n in first["pareto"])
    by_number = {t["number"]: t for t in first["trials"]}
    for n in first["pareto"]:
        trial = by_number[n]
        path = out / trial["recipe"]
        doc = yaml.safe_load(path.read_text())
        assert "search" not in doc and doc["passes"][1]["prune_channels"]["ratio"] == trial["params"]["passes.1.ratio"]
        result = CliRunner().invoke(cli, ["run", str(path), "--no-measure", "--format", "json", "-q"])
        assert result.exit_code == 0, result.stderr
        final = json.loads(result.stdout)["stages"][-1]
        assert final["devices"]["myriadx"]["est_latency_ms"] == trial["values"]["est_latency_ms@myriadx"]
        assert final["fidelity"]["vs_input"]["cosine"] == trial["values"]["cosine"]
        assert (path.parent / f"trial_{n:03d}.onnx").exists()


def test_resume_adds_trials_to_the_same_study(first, folder):
    code, out, err = tune(str(folder / "tiny.yaml"), "--trials", "10", "--seed", "0", "--jobs", "1",
                          "-o", str(folder / "out"), "--format", "json")
    assert code == 0, err
    again = json.loads(out)
    assert "resuming study" in err and "8 trials done, 2 to go" in err
    assert again["study"] == first["study"]
    assert [t["number"] for t in again["trials"]] == list(range(10))
    assert again["trials"][:8] == [dict(t, recipe=again["trials"][i]["recipe"]) for i, t in enumerate(first["trials"])]
    # the sampler's seed moves with the study's size: a resume does not replay the first trials
    assert [t["params"] for t in again["trials"][8:]] != [t["params"] for t in first["trials"][:2]]
    study = optuna.load_study(study_name=first["study"]["name"], storage=first["study"]["storage"])
    assert len([t for t in study.trials if t.state.is_finished()]) == 10


def test_same_tune_on_the_cache_does_no_pass_work(first, folder):
    """A fresh study with the same seed asks the same trials; every pass is read from the first one's cache."""
    code, out, err = tune(str(folder / "tiny.yaml"), "--trials", "8", "--seed", "0", "--jobs", "1",
                          "-o", str(folder / "again"), "--cache-dir", str(folder / "out" / "cache"),
                          "--format", "json", "-q")
    assert code == 0, err
    again = json.loads(out)
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in first["trials"]]
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] == 3 * 9  # 8 trials + the baseline
    assert all(t["cached_stages"] == 3 for t in again["trials"])
    assert [t["values"] for t in again["trials"]] == [t["values"] for t in first["trials"]]


def test_failed_trial_is_recorded_and_the_search_goes_on(folder, tmp_path, monkeypatch):
    from edgeopt.passes import get_pass

    cls = get_pass("quantize_weights")
    original = cls.apply

    def broken(self, model, params, ctx):
        if params.bits == 4:
            raise RuntimeError("int4 exploded")
        return original(self, model, params, ctx)

    monkeypatch.setattr(cls, "apply", broken)
    code, out, err = tune(str(folder / "tiny.yaml"), "--trials", "6", "--seed", "1", "--jobs", "1",
                          "-o", str(tmp_path), "--format", "json", "-q")
    assert code == 0, err
    doc = json.loads(out)
    failed = [t for t in doc["trials"] if t["state"] == "failed"]
    assert failed and all(t["params"]["passes.2.bits"] == 4 for t in failed)
    assert all("pass quantize_weights (passes[2]) failed" in t["error"] and "int4 exploded" in t["error"]
               and t["values"] is None for t in failed)
    assert any(t["state"] == "complete" for t in doc["trials"]) and len(doc["trials"]) == 6
    study = optuna.load_study(study_name=doc["study"]["name"], storage=doc["study"]["storage"])
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) == len(failed)


def test_jobs_2_and_clean_json_on_stdout(folder, tmp_path):
    """Two worker processes; stdout is the JSON document alone, progress went to stderr."""
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "tune", str(folder / "tiny.yaml"), "--trials", "4",
                           "--seed", "0", "--jobs", "2", "-o", str(tmp_path), "--format", "json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["trials"]) == 4 and doc["pareto"]
    assert "trial 0:" in proc.stderr and "wrote" in proc.stderr


def test_ray_missing_exits_2(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, out, err = tune(str(folder / "tiny.yaml"), "--trials", "1", "--ray", "local", "-o", str(tmp_path))
    assert code == 2 and out == ""
    assert err.strip() == "edgeopt: error: --ray needs Ray, which is not installed: pip install 'edgeopt[ray]'"
