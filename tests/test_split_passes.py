"""split_depthwise and split_spatial on tiny graphs: exactness at full size, what each layer's note
reports (MACs, error, chosen size, reasons for skipping), parameter validation, a recipe run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.graph.activations import collect_activations
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session

DEPTHWISE = get_pass("split_depthwise")
SPATIAL = get_pass("split_spatial")
SIZE = {"split_depthwise": "depth_multiplier", "split_spatial": "rank"}
SYMBOL = {"split_depthwise": "m", "split_spatial": "r"}
EVERYTHING = 10 ** 6  # a size beyond full: clamped to the exact one


def make(nodes, inits, in_shape, out_name="out", opset=13, extra_inputs=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in extra_inputs],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["n", "c", "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def init(rng, name: str, shape, scale: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def two_convs(seed: int = 0, **conv1_attrs) -> onnx.ModelProto:
    """input [N,4,11,12] -> Conv 3x3 (6 out, geometry conv1_attrs) -> Relu -> Conv 5x5 SAME_UPPER (8 out)."""
    rng = np.random.default_rng(seed)
    attrs = conv1_attrs or {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", **attrs),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2", auto_pad="SAME_UPPER")]
    inits = [init(rng, "w1", (6, 4, 3, 3)), init(rng, "b1", (6,)), init(rng, "w2", (8, 6, 5, 5), 0.2)]
    return make(nodes, inits, ["N", 4, 11, 12])


def feeds(seed: int = 1, n: int = 6, shape=(4, 11, 12)) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}


def run(model: onnx.ModelProto, inputs: dict) -> np.ndarray:
    return make_session(model).run(None, inputs)[0]


def apply(cls, model, data=None, **params):
    before = model.SerializeToString(deterministic=True)
    result = cls().apply(model, cls.Params(**params), PassContext(data=data, seed=0))
    assert model.SerializeToString(deterministic=True) == before, "the pass mutated its input"
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def note(result, name: str):
    (found,) = [n for n in result.notes if n.node == name]
    return found


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("cls", [DEPTHWISE, SPATIAL], ids=["depthwise", "spatial"])
@pytest.mark.parametrize("conv1", [
    {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "VALID"},
    {},  # defaults: no padding, stride 1
], ids=["pads-stride-dilation", "same-lower", "valid", "defaults"])
@pytest.mark.parametrize("with_data", [False, True], ids=["weights", "data"])
def test_full_size_split_matches_the_original(cls, conv1, with_data):
    model = two_convs(**conv1) if conv1 else two_convs(pads=[0, 0, 0, 0])
    x = feeds()
    result = apply(cls, model, data=x if with_data else None,
                   **{SIZE[cls.name]: EVERYTHING, "min_macs_saving": -100.0})
    assert result.modified
    assert ops(result.model) == {"Conv": 4, "Relu": 1}
    reference = run(model, x)
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(run(result.model, x) - reference).max() <= 1e-4 * scale
    # the original weights are gone, the output keeps its name
    names = {i.name for i in result.model.graph.initializer}
    assert "w1" not in names and "w2" not in names
    assert [o.name for o in result.model.graph.output] == ["out"]
    for layer in ("conv1", "conv2"):
        figures = note(result, layer).figures
        assert figures["error"] < 1e-6


def test_depthwise_structure_and_figures():
    model = two_convs()
    result = apply(DEPTHWISE, model, depth_multiplier=2, max_error=1.0, min_macs_saving=0.0)
    by_name = {n.name: n for n in result.model.graph.node}
    dw, pw = by_name["conv1_depthwise"], by_name["conv1_pointwise"]
    attrs = {a.name: helper.get_attribute_value(a) for a in dw.attribute}
    assert attrs["group"] == 4 and attrs["strides"] == [2, 1] and attrs["pads"] == [1, 0, 2, 1]
    assert attrs["dilations"] == [1, 2]
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert weights[dw.input[1]].shape == (8, 1, 3, 3)  # C*m = 4*2
    assert weights[pw.input[1]].shape == (6, 8, 1, 1)
    assert pw.input[2] in weights  # the bias moved to the pointwise conv
    assert len(by_name["conv2_pointwise"].input) == 2  # conv2 had no bias and gets none
    figures = note(result, "conv1").figures
    # conv1: O=6, C=4, K=3x3, input 11x12, output 6x9 (stride 2 and pads 1+2 vertically,
    # dilation 2 and pads 0+1 horizontally)
    assert figures["macs_before"] == 6 * 4 * 9 * 6 * 9
    assert figures["macs_after"] == (4 * 2 * 9 + 6 * 4 * 2) * 6 * 9
    assert figures["depth_multiplier"] == 2 and figures["error_on"] == "weights"
    assert figures["macs_saving"] == pytest.approx(1 - 2 * (9 + 6) / (6 * 9), abs=1e-4)
    assert 0 < figures["error"] < 1
    assert result.summary.startswith("split 2 of 2 Conv: their MACs ")


def test_spatial_structure_and_figures():
    model = two_convs()
    result = apply(SPATIAL, model, rank=3, max_error=1.0, min_macs_saving=0.0)
    by_name = {n.name: n for n in result.model.graph.node}
    v, h = by_name["conv1_vertical"], by_name["conv1_horizontal"]
    v_attrs = {a.name: helper.get_attribute_value(a) for a in v.attribute}
    h_attrs = {a.name: helper.get_attribute_value(a) for a in h.attribute}
    assert v_attrs == {"kernel_shape": [3, 1], "strides": [2, 1], "dilations": [1, 1], "pads": [1, 0, 2, 0]}
    assert h_attrs == {"kernel_shape": [1, 3], "strides": [1, 1], "dilations": [1, 2], "pads": [0, 0, 0, 1]}
    assert {a.name: helper.get_attribute_value(a) for a in by_name["conv2_vertical"].attribute}["auto_pad"] \
        == b"SAME_UPPER"
    figures = note(result, "conv1").figures
    # vertical conv at 6 rows x 12 input columns, horizontal at 6 x 9
    assert figures["macs_before"] == 6 * 4 * 9 * 6 * 9
    assert figures["macs_after"] == 3 * 4 * 3 * 6 * 12 + 6 * 3 * 3 * 6 * 9
    assert figures["rank"] == 3


@pytest.mark.parametrize("cls", [DEPTHWISE, SPATIAL], ids=["depthwise", "spatial"])
def test_auto_takes_the_smallest_size_within_the_weight_budget(cls):
    model = two_convs()
    from edgeopt.factorize import depthwise_weight_errors, spatial_weight_errors

    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    errors = (depthwise_weight_errors if cls is DEPTHWISE else spatial_weight_errors)(w2)
    budget = float(errors[3]) + 1e-6  # size 3 is the first within budget
    result = apply(cls, model, max_error=budget, min_macs_saving=0.0, exclude=["conv1"])
    figures = note(result, "conv2").figures
    assert figures[SIZE[cls.name]] == 3
    assert figures["error"] == pytest.approx(errors[3], abs=1e-6)
    assert note(result, "conv1").reason == "excluded by the `exclude` parameter"


@pytest.mark.parametrize("cls", [DEPTHWISE, SPATIAL], ids=["depthwise", "spatial"])
def test_with_data_the_reported_error_is_the_layer_output_error(cls):
    # The note's error is measured on calibration patches the fit did not see, so it predicts the
    # relative output error onnxruntime measures on fresh inputs from the same distribution.
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["out"], name="conv", pads=[1, 1, 1, 1])]
    model = make(nodes, [init(rng, "w", (12, 5, 3, 3)), init(rng, "b", (12,))], ["N", 5, 8, 8])
    scales = rng.uniform(0.3, 3.0, (1, 5, 1, 1))

    def inputs(n: int) -> dict[str, np.ndarray]:
        base = rng.standard_normal((n, 5, 1, 1)) * scales
        return {"input": (base + 0.4 * rng.standard_normal((n, 5, 8, 8))).astype(np.float32)}

    calib, fresh = inputs(80), inputs(200)
    size = {SIZE[cls.name]: 2}
    weights_only = apply(cls, model, max_error=1.0, min_macs_saving=0.0, **size)
    with_data = apply(cls, model, data=calib, max_error=1.0, min_macs_saving=0.0, **size)
    figures = note(with_data, "conv").figures
    assert figures["error_on"] == "output" and figures["refitted"] is True
    reference = run(model, fresh)
    measured = rel_error(run(with_data.model, fresh), reference)
    assert measured == pytest.approx(figures["error"], rel=0.15)  # an estimate from 20 held-out images
    # at the same size, weighting by the data gives a clearly smaller output error
    assert measured < 0.9 * rel_error(run(weights_only.model, fresh), reference)
    # and auto picks the smallest size within the output budget
    budgeted = apply(cls, model, data=calib, max_error=figures["error"] + 1e-6, min_macs_saving=0.0)
    assert note(budgeted, "conv").figures[SIZE[cls.name]] <= 2
    assert rel_error(run(budgeted.model, fresh), reference) <= 1.1 * figures["error"]


@pytest.mark.parametrize("cls", [DEPTHWISE, SPATIAL], ids=["depthwise", "spatial"])
def test_with_data_later_layers_are_fitted_towards_the_original_model(cls):
    # conv2 writes the graph output and every output position is sampled (a quarter of them held out
    # for the error), so its note's error is the model's relative output error against the original,
    # and inherited_error that of the model with only conv1 split (conv2 unsplit on conv1's output).
    model, x = two_convs(), feeds(n=6)
    fixed = {"split_depthwise": 2, "split_spatial": 5}[cls.name]  # sizes where the budget test below bites
    size = {SIZE[cls.name]: fixed}
    both = apply(cls, model, data=x, max_error=10.0, min_macs_saving=-1.0, **size)
    only_first = apply(cls, model, data=x, max_error=10.0, min_macs_saving=-1.0, exclude=["conv2"], **size)
    reference = run(model, x)
    inherited = rel_error(run(only_first.model, x), reference)
    figures = note(both, "conv2").figures
    assert inherited > 0.05
    assert figures["inherited_error"] == pytest.approx(inherited, rel=0.1)
    assert figures["error"] == pytest.approx(rel_error(run(both.model, x), reference), rel=0.1)
    assert "inherited_error" not in note(both, "conv1").figures
    # a budget conv1 and conv2 each meet on their own, but conv2 not after conv1's split:
    # conv2 is left alone, and its reason names the inherited error
    alone = note(apply(cls, model, data=x, max_error=10.0, min_macs_saving=-1.0, exclude=["conv1"], **size),
                 "conv2").figures["error"]
    first = note(both, "conv1").figures["error"]
    assert max(first, alone) < figures["error"]
    budget = (max(first, alone) + figures["error"]) / 2
    chained = apply(cls, model, data=x, max_error=budget, min_macs_saving=-1.0, **size)
    assert note(chained, "conv1").action == "split"
    skipped = note(chained, "conv2")
    assert skipped.action == "skipped"
    assert skipped.reason == (f"output error {figures['error']:.3g} at {SYMBOL[cls.name]}={fixed} exceeds "
                              f"max_error {budget:g}; the unsplit layer is already at "
                              f"{figures['inherited_error']:.3g} "
                              "from the earlier splits")


def odd_convs() -> onnx.ModelProto:
    """One Conv of each kind the splits leave alone, plus one they take."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["input", "w_1x1"], ["a"], name="pointwise"),
        helper.make_node("Conv", ["a", "w_group"], ["b"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w_dynamic"], ["c"], name="dynamic", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w_row"], ["d"], name="row", pads=[0, 1, 0, 1]),
        helper.make_node("Conv", ["d", "w_ok"], ["e"], name="ok", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["e", "s", "bb", "mu", "var"], ["out"], name="bn"),
    ]
    inits = [init(rng, "w_1x1", (8, 4, 1, 1)), init(rng, "w_group", (8, 4, 3, 3)), init(rng, "w_row", (8, 8, 1, 3)),
             init(rng, "w_ok", (16, 8, 3, 3)),
             numpy_helper.from_array(np.ones(16, np.float32), "s"), numpy_helper.from_array(np.zeros(16, np.float32), "bb"),
             numpy_helper.from_array(np.zeros(16, np.float32), "mu"), numpy_helper.from_array(np.ones(16, np.float32), "var")]
    return make(nodes, inits, ["N", 4, 6, 6], extra_inputs=[("w_dynamic", [8, 8, 3, 3])])


def test_skipped_layers_carry_their_reason():
    model = odd_convs()
    x = feeds(shape=(4, 6, 6)) | {"w_dynamic": np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32)}
    result = apply(DEPTHWISE, model, max_error=1.0, min_macs_saving=0.0)
    reasons = {n.node: n.reason for n in result.notes}
    assert reasons["pointwise"] == "1x1 kernel: already pointwise, nothing to split"
    assert reasons["grouped"] == "grouped convolution (group=2): only group 1 is split"
    assert reasons["dynamic"] == "W is not a constant"
    assert note(result, "row").action == "split"  # 1x3 has 3 taps: depthwise 1x3 + pointwise
    ok = note(result, "ok")
    assert ok.action == "split" and "a BatchNormalization follows: run fold_batchnorm" in ok.reason
    assert "followed by BatchNormalization" in result.summary
    assert ops(result.model) == {"Conv": 7, "BatchNormalization": 1}
    assert run(result.model, x).shape == run(model, x).shape

    spatial = apply(SPATIAL, model, max_error=1.0, min_macs_saving=0.0)
    assert note(spatial, "row").reason == "1x3 kernel: already one-dimensional, nothing to split"
    assert note(spatial, "pointwise").reason == "1x1 kernel: already one-dimensional, nothing to split"

    strict = apply(DEPTHWISE, model, max_error=0.01, min_macs_saving=0.5)
    assert not strict.modified and strict.model is model
    # ok: O=16, 3x3: m saves 1 - m*25/144, so m=2 (65 %) is the last to save 50 %
    assert note(strict, "ok").reason.startswith("weight error ")
    assert note(strict, "ok").reason.endswith(" at m=2 (the largest m that saves 50% of its MACs) "
                                              "exceeds max_error 0.01")
    fixed = apply(DEPTHWISE, model, depth_multiplier=5, min_macs_saving=0.25)
    assert note(fixed, "ok").reason == "m=5 saves 13% of the layer's MACs, less than min_macs_saving 25%"
    assert note(fixed, "ok").figures["macs_before"] == 16 * 8 * 9 * 6 * 6


def test_weights_in_constant_nodes_are_split():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 3, 3, 3))).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
             helper.make_node("Conv", ["input", "w"], ["out"], name="conv", pads=[1, 1, 1, 1])]
    model = make(nodes, [], ["N", 3, 7, 7])
    x = feeds(shape=(3, 7, 7))
    result = apply(SPATIAL, model, rank=EVERYTHING, min_macs_saving=-10.0)
    assert ops(result.model) == {"Conv": 2}
    np.testing.assert_allclose(run(result.model, x), run(model, x), atol=1e-4)


@pytest.mark.parametrize("cls", [DEPTHWISE, SPATIAL], ids=["depthwise", "spatial"])
def test_same_input_gives_byte_identical_output(cls):
    model, x = two_convs(), feeds()
    a = apply(cls, model, data=x, max_error=0.3, min_macs_saving=0.0).model
    b = apply(cls, model, data=x, max_error=0.3, min_macs_saving=0.0).model
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


@pytest.mark.parametrize("params, message", [
    ({"split_depthwise": {"depth_multiplier": 0}}, "passes[0].split_depthwise.depth_multiplier: must be >= 1, got 0"),
    ({"split_depthwise": {"depth_multiplier": "full"}}, "passes[0].split_depthwise.depth_multiplier: must be"),
    ({"split_spatial": {"max_error": 0}}, "passes[0].split_spatial.max_error: must be > 0, got 0"),
    ({"split_spatial": {"min_macs_saving": 1}}, "passes[0].split_spatial.min_macs_saving: must be < 1, got 1.0"),
    ({"split_spatial": {"ranks": 4}}, "passes[0].split_spatial: unknown parameter 'ranks'; did you mean 'rank'?"),
])
def test_bad_parameters_are_rejected_with_their_location(params, message):
    with pytest.raises(UserError) as info:
        parse_recipe({"model": "m.onnx", "passes": [params]}, Path("r.yaml"))
    assert message in str(info.value)


def test_recipe_run_after_fold_batchnorm(tmp_path, write_recipe):
    # fold_batchnorm, then both splits: the run verifies every stage and reports the notes.
    from edgeopt.pipeline import RunOptions, run_recipe
    from edgeopt.recipe.load import load_recipe

    model = odd_convs()
    model.graph.node.remove(model.graph.node[2])  # drop the dynamic-weight conv: feed c from b directly
    model.graph.node[2].input[0] = "b"
    del model.graph.input[1]
    onnx.save(model, tmp_path / "m.onnx")
    x = feeds(n=16, shape=(4, 6, 6))
    np.savez(tmp_path / "d.npz", **x)
    path = write_recipe({"model": "m.onnx", "output": "o.onnx", "data": "d.npz", "passes": [
        "fold_batchnorm", {"split_spatial": {"max_error": 0.3, "min_macs_saving": 0.1}},
        {"split_depthwise": {"max_error": 0.3, "min_macs_saving": 0.1}}]})
    doc = run_recipe(load_recipe(path), RunOptions(measure=False))
    stages = doc["stages"]
    assert [s["pass"] for s in stages] == ["input", "fold_batchnorm", "split_spatial", "split_depthwise"]
    spatial_notes = {n["node"]: n for n in stages[2]["notes"]}
    assert spatial_notes["ok"]["action"] == "split" and "reason" not in spatial_notes["ok"]  # BN folded
    assert spatial_notes["ok"]["figures"]["error_on"] == "output"
    assert spatial_notes["ok"]["figures"]["error"] <= 0.3
    assert stages[2]["macs"] < stages[1]["macs"]
    assert stages[2]["fidelity"]["cosine"] > 0.9
    json.dumps(doc)  # the notes are JSON-serializable
    assert (tmp_path / "o.onnx").exists()


def test_collect_activations_sees_the_conv_inputs_the_fit_uses():
    # The data-weighted fit reads the conv inputs through collect_activations: check it on conv2's input.
    model, x = two_convs(), feeds()
    relu = collect_activations(model, ["r1"], x)["r1"]
    assert relu.shape == (6, 6, 6, 9) and relu.min() >= 0
