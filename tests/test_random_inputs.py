"""Without `data:`: lossy stages say their figures come from random inputs, a fixed batch is verified on
several runs, and `random_inputs:` says how to draw each input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgeopt.cli.main import cli
from edgeopt.graph.shapes import fix_input_shapes
from edgeopt.verify.inputs import InputDistribution, distribution_problem, random_inputs
from edgeopt.verify.runtime import make_session, run_batched

from conftest import tiny_classifier

RANDOM = "fidelity measured on"


def run(recipe, *extra):
    return CliRunner().invoke(cli, ["run", str(recipe), "--no-measure", *extra])


def test_every_lossy_stage_without_data_warns_in_json_and_table(tmp_path, write_recipe, tiny_model_path):
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx",
                           "passes": ["fold_batchnorm", {"quantize_weights": {"bits": 8, "min_elements": 0}},
                                      {"sparsify": {"sparsity": 0.3}}]})
    result = run(recipe, "--format", "json")
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    assert not any(RANDOM in w for w in stages[1]["warnings"])  # fold_batchnorm is lossless: exact on any input
    for stage in stages[2:]:
        [warning] = [w for w in stage["warnings"] if RANDOM in w]
        assert warning.startswith(f"pass {stage['pass']} (passes[{stage['stage'] - 1}]): fidelity measured on 8 "
                                  "samples of seeded random inputs (standard normal), not on real data: it says "
                                  "nothing about accuracy")
        assert "give the recipe `data:`" in warning and "random_inputs:" in warning
    table = run(recipe, "--wide").stdout
    assert table.count("warning: pass ") == 2 and "says nothing about accuracy" in table
    # with data: no such warning
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    with_data = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "data": "d.npz",
                              "passes": [{"quantize_weights": {"bits": 8, "min_elements": 0}}]}, "with_data.yaml")
    result = run(with_data, "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["stages"][1]["warnings"] == []


def test_a_batch_fixed_at_1_is_verified_on_several_runs(tmp_path, write_recipe):
    model = fix_input_shapes(tiny_classifier(), {"input": [1, 3, 8, 8]})
    onnx.save(model, tmp_path / "fixed.onnx")
    inputs = random_inputs(model, {"input": [1, 3, 8, 8]}, seed=0, free_batch=8, fill_fixed_batch=True)
    assert inputs.feeds["input"].shape == (8, 3, 8, 8) and inputs.batch == 8
    # run_batched runs the fixed batch 8 times: the same as 8 separate onnxruntime runs
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    single = np.concatenate([session.run(None, {"input": inputs.feeds["input"][i:i + 1]})[0] for i in range(8)])
    [batched] = run_batched(make_session(model), model, inputs.feeds)
    np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-6)
    assert np.std(batched, axis=0).min() > 0  # 8 different samples, not one repeated
    # without fill_fixed_batch (a pass's one-sample probe) it stays one sample
    assert random_inputs(model, {"input": [1, 3, 8, 8]}).feeds["input"].shape == (1, 3, 8, 8)
    recipe = write_recipe({"model": "fixed.onnx", "output": "o.onnx", "passes": [{"sparsify": {"sparsity": 0.3}}]})
    result = run(recipe, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "verifying on 8 samples of random (seed 0)" in result.stderr
    assert "fidelity measured on 8 samples" in json.loads(result.stdout)["stages"][1]["warnings"][-1]


def test_random_inputs_draw_what_the_recipe_describes(tmp_path, write_recipe, tiny_model_path):
    shapes = {"input": [1, 3, 8, 8]}
    model = tiny_classifier()
    uniform = random_inputs(model, shapes, free_batch=64,
                            distributions={"input": InputDistribution("uniform", low=0.0, high=1.0)}).feeds["input"]
    assert uniform.shape == (64, 3, 8, 8) and uniform.dtype == np.float32
    assert uniform.min() >= 0.0 and uniform.max() < 1.0 and abs(uniform.mean() - 0.5) < 0.01
    normal = random_inputs(model, shapes, free_batch=64,
                           distributions={"input": InputDistribution("normal", mean=0.5, std=0.25)}).feeds["input"]
    assert abs(normal.mean() - 0.5) < 0.005 and abs(normal.std() - 0.25) < 0.005
    ids = InputDistribution("uniform", low=0, high=100).draw(np.random.default_rng(0), [1000], np.dtype(np.int64))
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() <= 99
    assert "whole numbers" in distribution_problem(InputDistribution("normal"), np.dtype(np.int64))
    assert distribution_problem(InputDistribution("uniform", low=0.5, high=2), np.dtype(np.int64)) is not None
    # through a run: the source and the warning say what was drawn
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx",
                           "random_inputs": {"input": {"distribution": "uniform", "low": 0, "high": 1}},
                           "passes": [{"sparsify": {"sparsity": 0.3}}]})
    result = run(recipe, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["data"] == "random (seed 0, input: uniform [0, 1))"
    assert "seeded random inputs (input uniform [0, 1))" in doc["stages"][1]["warnings"][-1]
    assert "random_inputs:" not in doc["stages"][1]["warnings"][-1]  # it has them: data is what is left to give


@pytest.mark.parametrize("random, message", [
    ({"img": {"distribution": "uniform"}}, "random_inputs.img: 'img' is not an input of tiny.onnx; its inputs are ['input']"),
    ({"input": {"distribution": "gauss"}}, "random_inputs.input.distribution: 'gauss' is not one of uniform, normal"),
    ({"input": {"low": 0}}, "random_inputs.input: missing `distribution:` (uniform or normal)"),
    ({"input": {"distribution": "uniform", "low": 1, "high": 1}}, "random_inputs.input: low must be below high, got low 1, high 1"),
    ({"input": {"distribution": "normal", "std": 0}}, "random_inputs.input.std: must be above 0, got 0"),
    ({"input": {"distribution": "uniform", "mean": 0.5}},
     "random_inputs.input.mean: a parameter of distribution normal, not uniform (keys of uniform: distribution, low, high)"),
    ({"input": {"distribution": "normal", "sdt": 0.5}}, "random_inputs.input.sdt: unknown key; did you mean 'std'?"),
    ({"input": {"distribution": "normal", "mean": "half"}}, "random_inputs.input.mean: must be a finite number, got 'half'"),
    ({"input": "uniform"}, "random_inputs.input: expected a mapping like {distribution: uniform, low: 0, high: 1}"),
    ([1, 2], "random_inputs: expected a mapping of input names to distributions"),
])
def test_bad_random_inputs_are_one_line_exit_2(tmp_path, write_recipe, tiny_model_path, random, message):
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "random_inputs": random,
                           "passes": ["fold_batchnorm"]})
    result = run(recipe)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_random_inputs_with_data_is_an_error(tmp_path, write_recipe, tiny_model_path):
    np.savez(tmp_path / "d.npz", input=np.zeros((2, 3, 8, 8), np.float32))
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "data": "d.npz",
                           "random_inputs": {"input": {"distribution": "normal"}}, "passes": []})
    result = run(recipe)
    assert result.exit_code == 2
    assert "random_inputs: the recipe has `data:`, which gives every input" in result.stderr
