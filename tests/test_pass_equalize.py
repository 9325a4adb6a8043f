"""equalize on tiny graphs: per-channel ranges equalized (numbers), outputs unchanged (onnxruntime), structure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeopt.cli.main import cli
from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.quant.equalize import Layer, equalize, input_ranges, output_ranges, pair_scales
from edgeopt.quant.qparams import compute_qparams, dequantize, quantize
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session

EQ = get_pass("equalize")
TOL = 1e-5
C = 8  # channels between the two convolutions


def apply(model: onnx.ModelProto, **params):
    before = model.SerializeToString(deterministic=True)
    result = EQ().apply(model, EQ.Params(**params), PassContext())
    assert model.SerializeToString(deterministic=True) == before, "the pass mutated its input"
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each Conv's weight by node name (initializer or Constant node)."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return {n.name: consts[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def channel_factors(rng, n: int, spread: float = 3.0) -> np.ndarray:
    """Per-channel factors over 10^(+-spread/2), shuffled."""
    return rng.permutation(np.logspace(-spread / 2, spread / 2, n))


def scale_in(w: np.ndarray, group: int, f: np.ndarray) -> np.ndarray:
    """w [Cout, Cin/g, k...] with the weights reading input channel c multiplied by f_c."""
    g = w.reshape((group, w.shape[0] // group) + w.shape[1:])
    return (g * f.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))).reshape(w.shape)


def chain(acts=(("Relu", {}),), dw_multiplier=0, group2=1, opset=13, seed=0, constant_nodes=False,
          extra_nodes=(), extra_inits=(), w1_shared=False) -> onnx.ModelProto:
    """x [N,4,H,W] -> conv1 (C out, 3x3) -> act -> [dw 3x3 (C*m out) -> act] -> conv2 (6 out, 1x1).

    Badly scaled the way folded BNs leave real networks: a balanced network whose channel c is multiplied
    by d_c (spanning 1000x) in the layer that writes it and divided by d_c in the layer that reads it.
    Per-tensor int8 then loses the small channels; equalization can undo d exactly.
    """
    rng = np.random.default_rng(seed)
    d1 = channel_factors(rng, C)
    arrays = {"w1": rng.standard_normal((C, 4, 3, 3)) * d1.reshape(C, 1, 1, 1), "b1": rng.standard_normal(C) * d1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    x = "c1"
    act_inits: list[onnx.TensorProto] = []

    def activation(x: str, tag: str) -> str:
        for k, (op, extra) in enumerate(acts):
            inputs = [x] + [f"{tag}{k}_{name}" for name in extra.get("inputs", {})] + extra.get("names", [])
            for name, value in extra.get("inputs", {}).items():
                act_inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"{tag}{k}_{name}"))
            nodes.append(helper.make_node(op, inputs, [f"{tag}{k}"], name=f"{tag}{k}", **extra.get("attrs", {})))
            x = f"{tag}{k}"
        return x

    x = activation(x, "a")
    channels, d = C, d1
    if dw_multiplier:
        channels = C * dw_multiplier
        d2 = channel_factors(rng, channels, spread=2.0)
        wd = rng.standard_normal((channels, 1, 3, 3)) * (d2 / np.repeat(d1, dw_multiplier)).reshape(-1, 1, 1, 1)
        arrays["wd"], arrays["bd"], d = wd, rng.standard_normal(channels) * d2, d2
        nodes.append(helper.make_node("Conv", [x, "wd", "bd"], ["cd"], name="dw", group=C, pads=[1, 1, 1, 1]))
        x = activation("cd", "d")
    arrays["w2"] = scale_in(rng.standard_normal((6, channels // group2, 1, 1)) * 0.5, group2, 1 / d)
    arrays["b2"] = rng.standard_normal(6)
    nodes.append(helper.make_node("Conv", [x, "w2", "b2"], ["y"], name="conv2", group=group2))
    nodes += list(extra_nodes)
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits] + nodes
        inits = []
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "H", "W"])]
    if w1_shared:  # a second Conv reads conv1's weight
        nodes.append(helper.make_node("Conv", ["x", "w1"], ["y2"], name="twin", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", C, "H", "W"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                              outputs, inits + act_inits + list(extra_inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(seed=1, shape=(2, 4, 7, 9)):
    return {"x": (np.random.default_rng(seed).standard_normal(shape) * 2).astype(np.float32)}


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, tol: float = TOL) -> float:
    data = feeds()
    ra, rb = make_session(a).run(None, data), make_session(b).run(None, data)
    scale = max(float(np.max(np.abs(x))) for x in ra)
    err = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(ra, rb))
    assert err <= tol * scale, f"max abs error {err} > {tol} x output scale {scale}"
    return err


def per_tensor_int8_error(w: np.ndarray, axis: int) -> float:
    """w stored as symmetric int8 with one scale for the whole tensor: the relative error of each channel
    slice along `axis` (output channels of a writer, input channels of a reader), averaged over channels."""
    w = w.astype(np.float32)
    qp = compute_qparams(w, 8)
    err = np.moveaxis(dequantize(quantize(w, qp), qp) - w, axis, 0).reshape(w.shape[axis], -1)
    ref = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return float(np.mean(np.linalg.norm(err, axis=1) / np.linalg.norm(ref, axis=1)))


def notes(result, action=None):
    return [n for n in result.notes if action is None or n.action == action]


# -- the math -----------------------------------------------------------------------------------------------


def test_pair_scales_equalize_both_ranges_in_one_round():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((C, 3, 3, 3)) * channel_factors(rng, C).reshape(C, 1, 1, 1)
    w2 = rng.standard_normal((5, C, 1, 1))
    r1, r2 = output_ranges(w1), input_ranges(w2)
    s = pair_scales(r1, r2, 1e-6)
    np.testing.assert_allclose(s, np.sqrt(r1 / r2))
    layers = [Layer(w1.copy(), np.ones(C)), Layer(w2.copy())]
    outcome = equalize(layers, [(0, 1)], rounds=5)
    assert outcome.converged and outcome.rounds == 2  # the second round finds every scale 1
    np.testing.assert_allclose(output_ranges(layers[0].weight), np.sqrt(r1 * r2), rtol=1e-12)
    np.testing.assert_allclose(input_ranges(layers[1].weight), np.sqrt(r1 * r2), rtol=1e-12)
    np.testing.assert_allclose(layers[0].bias, 1 / s)


def test_input_ranges_are_group_aware():
    w = np.zeros((6, 2, 1, 1))  # group 2: output channels 0-2 read inputs 0-1, 3-5 read inputs 2-3
    w[4, 1] = 7.0  # input channel 3
    w[1, 0] = -2.0  # input channel 0
    np.testing.assert_array_equal(input_ranges(w, group=2), [2.0, 0.0, 0.0, 7.0])
    layer = Layer(w.copy(), group=2)
    from edgeopt.quant.equalize import scale_inputs
    scale_inputs(layer, np.array([1.0, 1.0, 1.0, 0.5]))
    assert layer.weight[4, 1, 0, 0] == 3.5 and layer.weight[1, 0, 0, 0] == -2.0


def test_dead_channel_is_not_scaled():
    r1, r2 = np.array([1.0, 0.0, 4.0]), np.array([4.0, 3.0, 1e-12])
    s = pair_scales(r1, r2, 1e-6)
    np.testing.assert_array_equal(s, [0.5, 1.0, 1.0])


# -- the pass -----------------------------------------------------------------------------------------------


def test_conv_relu_conv_ranges_equalized_outputs_equal_and_int8_error_lower():
    model = chain()
    result = apply(model)
    assert result.modified and ops(result.model) == ops(model)
    before, after = weights(model), weights(result.model)
    np.testing.assert_allclose(output_ranges(after["conv1"]), input_ranges(after["conv2"]), rtol=1e-5)
    spread = lambda r: r.max() / r.min()  # noqa: E731
    assert spread(output_ranges(before["conv1"])) > 500 and spread(output_ranges(after["conv1"])) < 10
    assert_same(model, result.model)
    for name, axis in (("conv1", 0), ("conv2", 1)):
        assert per_tensor_int8_error(after[name], axis) < 0.2 * per_tensor_int8_error(before[name], axis)
    (note,) = notes(result, "equalized")
    assert note.reason == "conv1 -> Relu -> conv2"
    assert note.figures["w1_precision"][1] > 2 * note.figures["w1_precision"][0]


def test_per_tensor_int8_model_is_closer_to_float_after_equalize():
    model = chain()
    quant = get_pass("quantize_weights")
    qparams = quant.Params(granularity="per_tensor", min_elements=0, biases="float32")
    data = feeds()
    ref = make_session(model).run(None, data)[0]

    def error(m):
        q = quant().apply(m, qparams, PassContext()).model
        return float(np.abs(make_session(q).run(None, data)[0] - ref).max())

    assert error(apply(model).model) < 0.2 * error(model)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_triplet_is_equalized_through_both_pairs(multiplier):
    model = chain(dw_multiplier=multiplier)
    result = apply(model)
    assert [n.reason for n in notes(result, "equalized")] == ["conv1 -> Relu -> dw", "dw -> Relu -> conv2"]
    assert "not settled" not in result.summary
    after = weights(result.model)
    w_dw = after["dw"]
    # dw reads channel c with its output channels c*m .. c*m+m-1: conv1's range matches the dw's input range,
    # and the dw's output range matches conv2's input range (converged: both hold at once)
    np.testing.assert_allclose(output_ranges(after["conv1"]), input_ranges(w_dw, group=C), rtol=2e-3)
    np.testing.assert_allclose(output_ranges(w_dw), input_ranges(after["conv2"]), rtol=2e-3)
    assert_same(model, result.model)


def test_grouped_consumer():
    model = chain(group2=2)
    result = apply(model)
    assert len(notes(result, "equalized")) == 1
    assert_same(model, result.model)


@pytest.mark.parametrize("act", [("LeakyRelu", {"attrs": {"alpha": 0.1}}),
                                 ("PRelu", {"inputs": {"slope": np.linspace(0.1, 0.8, C).reshape(C, 1, 1)}})])
def test_other_positively_homogeneous_activations_are_exact(act):
    model = chain(acts=(act,))
    result = apply(model)
    assert len(notes(result, "equalized")) == 1 and ops(result.model) == ops(model)
    assert_same(model, result.model)


def test_no_activation_is_exact():
    result = apply(chain(acts=()))
    assert [n.reason for n in notes(result, "equalized")] == ["conv1 -> conv2"]
    assert_same(chain(acts=()), result.model)


RELU6 = ("Clip", {"inputs": {"lo": 0.0, "hi": 6.0}})


def test_relu6_becomes_relu_and_per_channel_min_exactly():
    model = chain(acts=(RELU6,))
    result = apply(model)
    assert ops(result.model) == Counter({"Conv": 2, "Relu": 1, "Min": 1})
    (note,) = notes(result, "equalized")
    assert "per-channel" in note.reason
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    (mins,) = [n for n in result.model.graph.node if n.op_type == "Min"]
    bound = inits[mins.input[1]]
    assert bound.shape == (C, 1, 1)
    w1_before, w1_after = weights(model)["conv1"], weights(result.model)["conv1"]
    s = output_ranges(w1_before) / output_ranges(w1_after)  # what conv1's channels were divided by
    np.testing.assert_allclose(bound.reshape(-1), 6.0 / s, rtol=1e-5)
    assert_same(model, result.model)


def test_relu6_actually_clips_in_the_test_graph():
    """The chain's pre-activations exceed 6, so a wrong clip point would show in the outputs."""
    model = chain(acts=(RELU6,))
    result = apply(model)
    # rewriting the Min bound to a scalar 6 (what 'treat the Clip as unchanged' would do) must be caught
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    (mins,) = [n for n in broken.graph.node if n.op_type == "Min"]
    for init in broken.graph.initializer:
        if init.name == mins.input[1]:
            init.CopyFrom(numpy_helper.from_array(np.full((C, 1, 1), 6.0, np.float32), init.name))
    with pytest.raises(AssertionError):
        assert_same(model, broken)


def test_clip_skip_leaves_relu6_pairs():
    model = chain(acts=(RELU6,))
    result = apply(model, clip="skip")
    assert not result.modified and result.model is model
    note = notes(result)[0]
    assert note.action == "skipped" and "not positively homogeneous" in note.reason and "clip: skip" in note.reason


def test_clip_with_nonzero_lower_bound_becomes_max_and_min():
    model = chain(acts=(("Clip", {"inputs": {"lo": -1.0, "hi": 2.0}}),))
    result = apply(model)
    assert ops(result.model) == Counter({"Conv": 2, "Max": 1, "Min": 1})
    assert_same(model, result.model)


def test_clip_attributes_before_opset_11():
    model = chain(acts=(("Clip", {"attrs": {"min": 0.0, "max": 6.0}}),), opset=10)
    result = apply(model)
    assert ops(result.model) == Counter({"Conv": 2, "Relu": 1, "Min": 1})
    assert_same(model, result.model)


def test_clip_without_upper_bound_is_a_relu_and_stays():
    model = chain(acts=(("Clip", {"inputs": {"lo": 0.0}}),))
    result = apply(model)
    assert ops(result.model) == ops(model) and len(notes(result, "equalized")) == 1
    assert_same(model, result.model)


def test_non_homogeneous_activation_is_skipped_with_reason():
    result = apply(chain(acts=(("Sigmoid", {}),)))
    assert not result.modified
    assert "Sigmoid is not positively homogeneous" in notes(result)[0].reason


def test_batchnorm_in_between_is_skipped_and_fold_batchnorm_then_equalize_works():
    rng = np.random.default_rng(3)
    bn = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
          (("g", rng.uniform(0.5, 2, C)), ("be", rng.standard_normal(C)), ("m", rng.standard_normal(C)),
           ("v", rng.uniform(0.5, 2, C)))]
    model = chain(acts=(("BatchNormalization", {"names": ["g", "be", "m", "v"]}), ("Relu", {})), extra_inits=bn)
    result = apply(model)
    assert not result.modified and "run fold_batchnorm first" in notes(result)[0].reason
    fold = get_pass("fold_batchnorm")
    folded = fold().apply(model, fold.Params(), PassContext()).model
    result = apply(folded)
    assert len(notes(result, "equalized")) == 1
    assert_same(model, result.model)


def test_shared_weight_is_skipped():
    model = chain(w1_shared=True)
    result = apply(model)
    assert not result.modified
    assert "'w1' is shared" in notes(result)[0].reason


def test_shared_consumer_weight_is_skipped():
    twin = helper.make_node("Mul", ["w2", "w2"], ["y3"], name="square")
    model = chain(extra_nodes=[twin])
    model.graph.output.append(helper.make_tensor_value_info("y3", TensorProto.FLOAT, [6, C, 1, 1]))
    result = apply(model)
    assert not result.modified
    assert "conv2 its weight 'w2' is shared" in notes(result)[0].reason


def test_weight_as_graph_input_is_skipped():
    model = chain()
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, list(w1.dims)))
    # an initializer listed as a graph input is an overridable default, not a constant
    result = apply(model)
    assert not result.modified and "'w1' is a graph input" in notes(result)[0].reason


def test_constant_node_weights_are_equalized():
    model = chain(constant_nodes=True, opset=11, acts=(RELU6,))
    result = apply(model)
    assert len(notes(result, "equalized")) == 1
    assert "Constant" not in ops(result.model)
    assert_same(model, result.model)


def test_exclude_by_name():
    result = apply(chain(dw_multiplier=1), exclude=["conv2"])
    assert [n.reason for n in notes(result, "equalized")] == ["conv1 -> Relu -> dw"]
    assert any("conv2 is excluded" in n.reason for n in notes(result, "skipped"))


def test_deterministic_bytes():
    model = chain(dw_multiplier=1, acts=(RELU6,))
    assert (apply(model).model.SerializeToString(deterministic=True)
            == apply(model).model.SerializeToString(deterministic=True))


def test_bad_parameter_is_rejected_with_its_location():
    with pytest.raises(UserError) as info:
        parse_recipe({"model": "m.onnx", "passes": [{"equalize": {"clip": "relu"}}]}, Path("r.yaml"))
    assert "passes[0].equalize.clip" in str(info.value)


def test_cli_fold_batchnorm_then_equalize_on_mobilenet_digits(tmp_path, write_recipe):
    """Through `edgeopt run`: lossless (the pipeline's 1e-4 check and MAC count), accuracy unchanged."""
    samples = Path(__file__).resolve().parents[1] / "sample_models"
    recipe = write_recipe({"model": str(samples / "mobilenet_digits.onnx"), "output": "out.onnx",
                           "data": str(samples / "digits_test.npz"), "device": "rpi3",
                           "passes": ["fold_batchnorm", "equalize"]})
    result = CliRunner().invoke(cli, ["run", str(recipe), "--format", "json", "--quiet", "--no-measure"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert [s["pass"] for s in stages] == ["input", "fold_batchnorm", "equalize"]
    assert stages[2]["macs"] == stages[1]["macs"]
    assert stages[2]["fidelity"]["accuracy"] == stages[1]["fidelity"]["accuracy"] > 0.95
    assert stages[2]["fidelity"]["max_abs_error"] < 1e-4
    out = onnx.load(tmp_path / "out.onnx")
    assert ops(out)["Min"] == 12  # the 12 ReLU6 inside equalized pairs now clip per channel


def test_float16_weights_are_skipped():
    model = chain()
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    result = apply(model)
    assert not result.modified and "float16, not float32/float64" in notes(result)[0].reason
