"""Recipes shipped in recipes/ run as written: `edgeopt run RECIPE` passes the recipe's own checks."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from edgeopt.cli.main import cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_tune_mobilenet_digits_runs_as_written(tmp_path):
    """Its baseline (the recipe as written) is also the point `edgeopt tune` starts from: it must be feasible."""
    recipe = RECIPES / "tune_mobilenet_digits.yaml"
    out = tmp_path / "tuned.onnx"
    result = CliRunner().invoke(cli, ["run", str(recipe), "--no-measure", "--output", str(out), "--format", "json",
                                      "-q"])
    assert result.exit_code == 0, result.stderr + str(result.exception)
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] and set(checks) == {"min_cosine", "max_accuracy_drop", "max_weight_bytes"}
    assert all(c["ok"] for c in checks.values()), checks
    accuracy = [s["fidelity"]["accuracy"] for s in doc["stages"]]
    assert checks["max_accuracy_drop"]["value"] == accuracy[0] - accuracy[-1] < 0.02
    assert [s["pass"] for s in doc["stages"]][-2:] == ["split_spatial", "quantize_weights"]  # the split is in it
    assert out.is_file()
    search = yaml.safe_load(recipe.read_text())["search"]
    assert set(search) == {"passes.3.ratio", "passes.3.criterion", "passes.4", "passes.5.bits", "objectives"}
