"""The CLI contract: exit codes 0/1/2/3, one-line errors, JSON on stdout, atomic output."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from edgeopt.cli.main import cli
from edgeopt.passes import Pass, PassResult
import edgeopt.passes as passes_pkg


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def recipe(tmp_path, tiny_model_path, write_recipe):
    return write_recipe({
        "model": tiny_model_path.name,
        "output": "out/tiny.opt.onnx",
        "device": "rpi3",
        "passes": ["fold_batchnorm"],
    })


def test_run_writes_output_and_leaves_input_untouched(tmp_path, recipe, tiny_model_path):
    before = sha(tiny_model_path)
    result = run_cli("run", recipe, "--format", "json", "--quiet", "--no-measure")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sha(tiny_model_path) == before
    out = tmp_path / "out" / "tiny.opt.onnx"
    assert out.exists() and doc["output"] == str(out)
    assert [s["pass"] for s in doc["stages"]] == ["input", "fold_batchnorm"]
    assert {n.op_type for n in onnx.load(out).graph.node} >= {"Conv"}
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(out).graph.node}
    for key in ("edgeopt_version", "recipe", "model", "output", "device", "ok", "stages", "checks"):
        assert key in doc
    for key in ("stage", "pass", "params", "macs", "params_count", "weight_bytes", "peak_activation_bytes",
                "est_latency_ms", "est_energy_mj", "measured_latency_ms", "fidelity"):
        assert key in doc["stages"][1]
    fid = doc["stages"][1]["fidelity"]
    assert fid["cosine"] > 0.999999 and fid["max_abs_error"] < 1e-4 and fid["top1_agreement"] == 1.0
    assert doc["stages"][1]["measured_latency_ms"] is None  # --no-measure
    # the folded model has fewer params (BN's 4 x 8 gone) and the same MACs
    assert doc["stages"][1]["params_count"] < doc["stages"][0]["params_count"]
    assert doc["stages"][1]["macs"] == doc["stages"][0]["macs"]


def test_same_inputs_give_byte_identical_outputs(tmp_path, recipe):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run_cli("run", recipe, "-o", a, "-q", "--no-measure").exit_code == 0
    assert run_cli("run", recipe, "-o", b, "-q", "--no-measure").exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_keep_stages_and_set(tmp_path, recipe):
    stages = tmp_path / "stages"
    result = run_cli("run", recipe, "--keep-stages", stages, "--set", "checks.min_cosine=0.99",
                     "--format", "json", "-q", "--no-measure")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in stages.iterdir()) == ["00_input.onnx", "01_fold_batchnorm.onnx"]
    assert json.loads(result.stdout)["checks"][0]["name"] == "min_cosine"


def test_failed_check_exits_1_and_writes_nothing(tmp_path, recipe):
    result = run_cli("run", recipe, "--set", "checks.max_weight_bytes=10", "--format", "json", "-q", "--no-measure")
    assert result.exit_code == 1
    assert "check max_weight_bytes failed" in result.stderr and "limit <= 10" in result.stderr
    doc = json.loads(result.stdout)  # the report is still printed
    assert doc["ok"] is False and doc["checks"][0]["ok"] is False
    assert not (tmp_path / "out").exists()


class _Doubles(Pass):
    """A 'lossless' pass that is not: doubles the logits."""

    name = "test_doubles_output"
    summary = "test only"
    lossless = True

    def apply(self, model, params, ctx):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        old = out.graph.output[0].name
        for node in out.graph.node:
            node.output[:] = [o + "_pre" if o == old else o for o in node.output]
        out.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        out.graph.node.append(helper.make_node("Mul", [old + "_pre", "two"], [old], name="double"))
        return PassResult(out, True, summary="doubled")


class _Breaks(Pass):
    """Produces a model that reads an undefined tensor."""

    name = "test_breaks_model"
    summary = "test only"

    def apply(self, model, params, ctx):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.node[0].input[0] = "no_such_tensor"
        return PassResult(out, True)


class _Raises(Pass):
    """A pass with a bug: raises instead of skipping what it cannot handle."""

    name = "test_raises"
    summary = "test only"

    def apply(self, model, params, ctx):
        raise IndexError("too many indices for array")


@pytest.mark.parametrize("cls, message", [
    (_Doubles, "pass test_doubles_output (passes[1]) is lossless but its outputs diverged: max abs error"),
    (_Breaks, "pass test_breaks_model (passes[1]) produced a model that fails the ONNX checker"),
    (_Raises, "pass test_raises (passes[1]) failed on this model (IndexError: too many indices for array); "
              "nothing was written. This is a bug in edgeopt"),
])
def test_pass_that_fails_verification_exits_3(tmp_path, monkeypatch, write_recipe, tiny_model_path, cls, message):
    monkeypatch.setitem(passes_pkg._REGISTRY, cls.name, cls)
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "passes": ["fold_batchnorm", cls.name]})
    result = run_cli("run", recipe, "-q", "--no-measure")
    assert result.exit_code == 3
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def _bad_inputs(tmp_path: Path, tiny_model_path: Path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello, I am not a model\n" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_model_path.read_bytes()[:300])
    return [
        ({"model": "missing.onnx"}, "missing.onnx: model file not found"),
        ({"model": not_onnx.name}, "notes.onnx: not"),
        ({"model": truncated.name}, "truncated.onnx: not"),
        ({"model": tiny_model_path.name, "device": "myriadz"}, "myriadz"),
        ({"model": tiny_model_path.name, "passes": ["fold_batchnrom"]}, "did you mean 'fold_batchnorm'?"),
        ({"model": tiny_model_path.name, "data": "nope.npz"}, "nope.npz: data file not found"),
    ]


def test_bad_input_exits_2_with_one_line(tmp_path, tiny_model_path, write_recipe):
    for doc, message in _bad_inputs(tmp_path, tiny_model_path):
        recipe = write_recipe({"output": "o.onnx", **doc})
        result = run_cli("run", recipe, "-q", "--no-measure")
        assert result.exit_code == 2, (doc, result.output)
        assert message in result.stderr, (doc, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "o.onnx").exists()


def test_invalid_yaml_and_list_recipe_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [x\n")
    assert run_cli("run", bad).exit_code == 2
    bad.write_text("- a\n- b\n")
    result = run_cli("run", bad)
    assert result.exit_code == 2 and "a recipe is a mapping" in result.stderr


def test_output_must_not_overwrite_input(write_recipe, tiny_model_path):
    result = run_cli("run", write_recipe({"model": tiny_model_path.name, "output": tiny_model_path.name}))
    assert result.exit_code == 2 and "would overwrite the input model" in result.stderr


def test_data_with_labels_gives_accuracy(tmp_path, tiny_model_path, write_recipe):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((16, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 4, 16))
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "data": "d.npz",
                           "passes": ["fold_batchnorm"], "checks": {"max_accuracy_drop": 0.0}})
    result = run_cli("run", recipe, "--format", "json", "-q", "--no-measure")
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert stages[0]["fidelity"]["accuracy"] == stages[1]["fidelity"]["accuracy"]
    assert 0.0 <= stages[0]["fidelity"]["accuracy"] <= 1.0


def test_data_missing_input_array(tmp_path, tiny_model_path, write_recipe):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    result = run_cli("run", write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "data": "d.npz"}))
    assert result.exit_code == 2
    assert "no array named 'input' (the model's input); the file has ['x']" in result.stderr


def test_passes_lists_and_describes():
    result = run_cli("passes", "--format", "json")
    names = [p["name"] for p in json.loads(result.stdout)["passes"]]
    assert {"fold_batchnorm", "fuse_relu6", "simplify"} <= set(names)
    one = json.loads(run_cli("passes", "fold_batchnorm", "--format", "json").stdout)
    assert one["lossless"] is True and one["summary"]
    bad = run_cli("passes", "fold_batchnrom")
    assert bad.exit_code == 2 and "did you mean 'fold_batchnorm'?" in bad.stderr


def test_compare_identical_and_gate(tmp_path, tiny_model_path):
    result = run_cli("compare", tiny_model_path, tiny_model_path, "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["cosine"] == pytest.approx(1.0) and doc["max_abs_error"] == 0.0 and doc["top1_agreement"] == 1.0
    from conftest import tiny_classifier
    other = tmp_path / "other.onnx"
    onnx.save(tiny_classifier(seed=5), other)
    gated = run_cli("compare", tiny_model_path, other, "--min-cosine", "0.9999")
    assert gated.exit_code == 1 and "below --min-cosine" in gated.stderr


def test_subprocess_json_on_stdout_progress_on_stderr(tmp_path, recipe):
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "run", str(recipe), "--format", "json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["stages"][1]["measured_latency_ms"] > 0
    assert "fold_batchnorm" in proc.stderr  # progress went to stderr


def test_subprocess_exit_code_2_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "run", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edgeopt: error: {tmp_path / 'none.yaml'}: recipe file not found; check the path"


@pytest.mark.parametrize("fmt, probe", [("csv", "stage,pass,macs"), ("markdown", "| # | pass |"), ("table", "fold_batchnorm")])
def test_other_formats(recipe, fmt, probe):
    result = run_cli("run", recipe, "--format", fmt, "-q", "--no-measure")
    assert result.exit_code == 0 and probe in result.stdout


def test_missing_calibration_data_exits_2(tmp_path, tiny_model_path, write_recipe):
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "calibration_data": "cal.npz"})
    result = run_cli("run", recipe, "-q", "--no-measure")
    assert result.exit_code == 2 and "cal.npz: data file not found" in result.stderr
