"""Pipeline invariants beyond the outputs: lossless stages keep the MAC count, lossy wrecks warn."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import helper, numpy_helper

import edgeopt.passes as passes_pkg
from edgeopt.cli.main import cli
from edgeopt.invariants import lossless_macs_problem, wreck_warning
from edgeopt.passes import Pass, PassResult


def _rewired(model: onnx.ModelProto, extra_nodes, extra_inits, make_output) -> onnx.ModelProto:
    """The model with its first output renamed to `<out>_pre` and recomputed by extra nodes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.output[0].name
    for node in out.graph.node:
        node.output[:] = [o + "_pre" if o == old else o for o in node.output]
    out.graph.initializer.extend(extra_inits)
    out.graph.node.extend(extra_nodes(old + "_pre") + [make_output(old + "_pre", old)])
    return out


class _AddsDeadMacs(Pass):
    """Claims to be lossless, keeps the outputs exactly, but adds a 4x4 MatMul that is multiplied by 0."""

    name = "test_adds_dead_macs"
    summary = "test only"
    lossless = True

    def apply(self, model, params, ctx):
        inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "dead.w"),
                 numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
        nodes = lambda pre: [helper.make_node("MatMul", [pre, "dead.w"], ["dead.mm"], name="dead_mm"),  # noqa: E731
                             helper.make_node("Mul", ["dead.mm", "zero"], ["dead.zero"], name="dead_mul")]
        return PassResult(_rewired(model, nodes, inits,
                                  lambda pre, out: helper.make_node("Add", [pre, "dead.zero"], [out], name="dead_add")),
                          True, summary="added dead MACs")


class _Negates(Pass):
    """A lossy pass that wrecks the model: the logits change sign (cosine -1 against the input)."""

    name = "test_negates"
    summary = "test only"
    advice = "not negating"

    def apply(self, model, params, ctx):
        return PassResult(_rewired(model, lambda pre: [], [],
                                   lambda pre, out: helper.make_node("Neg", [pre], [out], name="neg")),
                          True, summary="negated")


def _run(monkeypatch, write_recipe, tiny_model_path, cls):
    monkeypatch.setitem(passes_pkg._REGISTRY, cls.name, cls)
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "device": "rpi3",
                           "passes": ["fold_batchnorm", cls.name]})
    return CliRunner().invoke(cli, ["run", str(recipe), "--format", "json", "--no-measure"], catch_exceptions=False)


def test_lossless_pass_that_changes_the_mac_count_exits_3(tmp_path, monkeypatch, write_recipe, tiny_model_path):
    result = _run(monkeypatch, write_recipe, tiny_model_path, _AddsDeadMacs)
    assert result.exit_code == 3
    # tiny_classifier: 8x3x8x8 conv (13,824 MACs at batch 1) + Gemm 8x4 (32); the dead MatMul adds 16
    assert ("pass test_adds_dead_macs (passes[1]) is lossless but changed the MAC count: "
            "13,856 -> 13,872 MACs (+0.1%)") in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_lossy_wreck_warns_with_the_figure_and_advice(tmp_path, monkeypatch, write_recipe, tiny_model_path):
    result = _run(monkeypatch, write_recipe, tiny_model_path, _Negates)
    assert result.exit_code == 0  # no check in the recipe: it runs, but never silently
    stage = json.loads(result.stdout)["stages"][-1]
    assert stage["fidelity"]["vs_input"]["cosine"] < -0.99
    assert len(stage["warnings"]) == 2  # the wreck, then: no data, so random inputs
    assert "seeded random inputs" in stage["warnings"][1] and "says nothing about accuracy" in stage["warnings"][1]
    warning = stage["warnings"][0]
    assert warning.startswith("pass test_negates (passes[1]): output cosine -1.0000 against the input model")
    assert "try not negating" in warning and "min_cosine" in warning
    assert warning in result.stderr
    assert (tmp_path / "o.onnx").exists()


def test_mac_invariant_rules():
    exact = {"macs": 1000, "macs_exact": True}
    assert lossless_macs_problem("p", exact, dict(exact)) == (None, None)
    error, warning = lossless_macs_problem("p", exact, {"macs": 900, "macs_exact": True})
    assert error == "p is lossless but changed the MAC count: 1,000 -> 900 MACs (-10.0%)"
    assert warning is None
    # what the pass reports folding is allowed
    assert lossless_macs_problem("p", exact, {"macs": 900, "macs_exact": True}, folded_macs=100) == (None, None)
    # a stage whose MAC layers are not all counted cannot be compared: a warning, never exit 3
    error, warning = lossless_macs_problem("p", exact, {"macs": 900, "macs_exact": False})
    assert error is None and "not comparable" in warning
    assert wreck_warning("p", {"vs_input": {"cosine": 0.95}}) is None
    assert "cosine 0.5000" in wreck_warning("p", {"vs_input": {"cosine": 0.5}})
