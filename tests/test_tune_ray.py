"""edgeopt tune --ray against a real local Ray instance started here (not a mock): every trial is a Ray task,
the model and data go through the object store, results land in the Optuna study on the driver."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from click.testing import CliRunner

from edgeopt.cli.main import cli
from test_tune import OBJECTIVES, make_inputs, recipe_doc, write

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.xdist_group("tune_ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_tune_through_local_ray(local_ray, tmp_path):
    make_inputs(tmp_path)
    recipe = write(tmp_path, recipe_doc())
    result = CliRunner().invoke(cli, ["tune", str(recipe), "--trials", "6", "--seed", "0", "--ray", "auto",
                                      "-o", str(tmp_path / "out"), "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr + str(result.exception)
    doc = json.loads(result.stdout)
    study = optuna.load_study(study_name=doc["study"]["name"], storage=doc["study"]["storage"])
    finished = sorted((t for t in study.trials if t.state.is_finished()), key=lambda t: t.number)
    assert [t.number for t in finished] == [t["number"] for t in doc["trials"]] == list(range(6))
    for record, trial in zip(doc["trials"], finished):
        assert trial.user_attrs["edgeopt"]["state"] == record["state"] != "failed"
        assert list(trial.values) == [record["values"][o] for o in OBJECTIVES]
    assert doc["pareto"] and doc["baseline"]["values"]["cosine"] > 0.99
    by_number = {t["number"]: t for t in doc["trials"]}
    for n in doc["pareto"]:
        path = tmp_path / "out" / by_number[n]["recipe"]
        assert "search" not in yaml.safe_load(path.read_text())
        run = CliRunner().invoke(cli, ["run", str(path), "--no-measure", "--format", "json", "-q"])
        assert run.exit_code == 0, run.stderr
        final = json.loads(run.stdout)["stages"][-1]
        assert final["devices"]["myriadx"]["est_latency_ms"] == by_number[n]["values"]["est_latency_ms@myriadx"]
        assert final["fidelity"]["vs_input"]["cosine"] == by_number[n]["values"]["cosine"]


def test_ray_tasks_read_shipped_copies(local_ray, tmp_path):
    """The task side writes the object store's bytes to a node-local folder and runs from there."""
    from edgeopt.tune.executors import _materialize, shipped_files

    make_inputs(tmp_path)
    doc = {"model": str(tmp_path / "tiny.onnx"), "data": str(tmp_path / "tiny.npz")}
    files = shipped_files(doc)

    @ray.remote(num_cpus=1)
    def where(shipped):
        return _materialize(shipped)

    paths = ray.get(where.remote(ray.put(files)))
    assert set(paths) == {"model", "data"}
    assert paths["model"] != doc["model"] and paths["model"].endswith("tiny.onnx")
    with open(paths["model"], "rb") as handle:
        assert handle.read() == (tmp_path / "tiny.onnx").read_bytes()
