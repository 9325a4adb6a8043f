"""The recipe's `fidelity: {output, metric}`: which output checks and warnings look at, and how."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import edgeopt.passes as passes_pkg
from edgeopt.cli.main import cli
from edgeopt.passes import Pass, PassResult


def _two_outputs(path):
    """x [N, 5, 4] -> scores [N, 5, 6] (a per-position classifier) and aux = 1000 x (large, unimportant)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array(1000.0, np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"], name="mm"),
         helper.make_node("Mul", ["x", "k"], ["aux"], name="big")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5, 6]),
         helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 5, 4])], [w, k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class _NegatesAux(Pass):
    """A lossy pass that wrecks the unimportant output only."""

    name = "test_negates_aux"
    summary = "test only"

    def apply(self, model, params, ctx):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(-1000.0, np.float32), "k"))
        return PassResult(out, True)


def _run(tmp_path, monkeypatch, write_recipe, fidelity, checks=None):
    monkeypatch.setitem(passes_pkg._REGISTRY, _NegatesAux.name, _NegatesAux)
    _two_outputs(tmp_path / "m.onnx")
    doc = {"model": "m.onnx", "output": "o.onnx", "passes": [_NegatesAux.name]}
    if fidelity is not None:
        doc["fidelity"] = fidelity
    if checks:
        doc["checks"] = checks
    return CliRunner().invoke(cli, ["run", str(write_recipe(doc)), "--format", "json", "--no-measure"])


def test_named_output_and_top1_per_position(tmp_path, monkeypatch, write_recipe):
    result = _run(tmp_path, monkeypatch, write_recipe, {"output": "scores", "metric": "top1"},
                  {"min_cosine": 0.999, "min_top1_agreement": 1.0})
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"][-1]
    fid = stage["fidelity"]
    assert fid["on"] == {"output": "scores", "metric": "top1"}
    assert fid["vs_input"]["cosine"] > 0.999999 and fid["vs_input"]["top1_agreement"] == 1.0
    # the named output only: aux's wreck counts nowhere, though its figures are in the document
    assert fid["vs_input"]["worst_output"] == "scores"
    assert fid["vs_input"]["outputs"]["aux"]["cosine"] < -0.999999
    assert [c.get("output") for c in json.loads(result.stdout)["checks"]] == ["scores", "scores"]
    # no wreck warning; the one warning says the figures come from random inputs
    assert len(stage["warnings"]) == 1 and "seeded random inputs (standard normal)" in stage["warnings"][0]


def test_without_it_every_output_counts(tmp_path, monkeypatch, write_recipe):
    result = _run(tmp_path, monkeypatch, write_recipe, None, {"min_cosine": 0.9})
    assert result.exit_code == 1  # the worst output (aux, negated) is what the check reads
    doc = json.loads(result.stdout)
    vs_input = doc["stages"][-1]["fidelity"]["vs_input"]
    assert vs_input["cosine"] == vs_input["outputs"]["aux"]["cosine"] < -0.999999
    assert vs_input["outputs"]["scores"]["cosine"] > 0.999999 and vs_input["worst_output"] == "aux"
    assert doc["checks"][0]["output"] == "aux"
    assert "check min_cosine failed" in result.stderr and "on output 'aux'" in result.stderr
    assert doc["stages"][-1]["warnings"][0].startswith(
        "pass test_negates_aux (passes[0]): output 'aux' cosine -1.0000 against the input model (the worst of 2 outputs)")


def test_bad_fidelity_is_one_line_exit_2(tmp_path, monkeypatch, write_recipe):
    for fidelity, message in [({"metric": "top5"}, "fidelity.metric: 'top5' is not one of cosine, top1, max_abs"),
                              ({"output": "nope"}, "fidelity.output: 'nope' is not an output of m.onnx"),
                              ({"outptu": "scores"}, "fidelity.outptu: unknown key; did you mean 'output'?")]:
        result = _run(tmp_path, monkeypatch, write_recipe, fidelity)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
