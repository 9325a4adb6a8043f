"""If / Loop bodies counted, unknown ops costed conservatively, and the MAC rule by hand."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.devices import load_device
from edgeopt.graph.macs import layer_macs
from edgeopt.profile import profile_model, profile_on_devices

RNG = np.random.default_rng(0)


def f32(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def branch(name, width):
    """x [1, 4] @ W [4, width] -> [1, width]: 4 x width MACs, W an initializer of the branch."""
    mm = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name="mm")
    return helper.make_graph([mm], name, [], [vi(f"{name}_y", [1, width])], [f32(f"{name}_w", [4, width])])


def if_model(cond_input: bool):
    node = helper.make_node("If", ["c"], ["y"], name="If_0", then_branch=branch("then", 8),
                            else_branch=branch("else", 2))
    inputs = [vi("x", [1, 4])]
    inits = []
    if cond_input:
        inputs.append(vi("c", [], TensorProto.BOOL))
    else:
        inits.append(numpy_helper.from_array(np.array(False), "c"))
    graph = helper.make_graph([node], "g", inputs, [vi("y", [1, "n"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def layer(prof, name):
    return next(l for l in prof.layers if l["name"] == name)


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_constant_condition_counts_its_branch():
    model = if_model(cond_input=False)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    (y,) = run(model, {"x": x})
    assert y.shape == (1, 2)  # onnxruntime takes the else branch, as the profile must
    prof = profile_model(model, load_device("myriadx"))
    mm = layer(prof, "If_0/else/mm")
    assert mm["macs"] == 4 * 2 and mm["counted"] and mm["in_subgraph"]
    assert mm["params_count"] == 8  # the branch's own initializer is a weight
    assert not any(l["name"].startswith("If_0/then") for l in prof.layers)
    t = prof.totals
    assert t["macs"] == 8 and t["coverage"] == 1.0 and t["subgraph_layers"] == 1
    assert t["subgraph_choices"] == ["If_0: condition is constant False: else branch counted"]
    assert layer(prof, "If_0")["note"] == "condition is constant False: else branch counted"
    assert t["est_latency_ms"] > 0 and t["est_energy_mj"] > 0
    assert t["peak_activation_bytes"] == 4 * 4 + 2 * 4  # x and y live together at the MatMul


def test_input_condition_counts_the_costlier_branch_and_says_so():
    model = if_model(cond_input=True)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    assert run(model, {"x": x, "c": np.array(True)})[0].shape == (1, 8)
    prof = profile_model(model, load_device("myriadx"))
    assert layer(prof, "If_0/then/mm")["macs"] == 32
    assert prof.totals["macs"] == 32  # then (32 MACs) beats else (8)
    (choice,) = prof.totals["subgraph_choices"]
    assert choice.startswith("If_0: condition not constant: then branch counted, the more expensive")
    assert "64 vs 16 ops" in choice


def test_input_condition_on_real_feeds_counts_the_branch_they_take():
    # silero VAD: `sr == 16000` picks the branch; the run's inputs say which one runs
    model = if_model(cond_input=True)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    assert run(model, {"x": x, "c": np.array(False)})[0].shape == (1, 2)
    prof = profile_on_devices(model, [load_device("myriadx")], None, {"x": x, "c": np.array(False)})[0]
    assert prof.totals["macs"] == 8  # the cheaper else branch, because that is what these inputs run
    assert prof.totals["subgraph_choices"] == ["If_0: condition is False on the given inputs: else branch counted"]


def test_loop_with_constant_trip_count_counts_the_body_that_many_times():
    # carried h [1, 4]: h = h @ W, three times -> 3 x 16 MACs
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["h_in", "w"], ["h_out"], name="mm")],
        "body", [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("h_in", [1, 4])],
        [vi("cond_out", [], TensorProto.BOOL), vi("h_out", [1, 4])])
    w = f32("w", [4, 4])
    loop = helper.make_node("Loop", ["trip", "", "x"], ["h"], name="Loop_0", body=body)
    graph = helper.make_graph([loop], "g", [vi("x", [1, 4])], [vi("h", [1, 4])],
                              [numpy_helper.from_array(np.array(3, np.int64), "trip"), w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    wv = numpy_helper.to_array(w)
    np.testing.assert_allclose(run(model, {"x": x})[0], x @ wv @ wv @ wv, rtol=1e-5)  # it does run 3 times

    device = load_device("myriadx")
    prof = profile_model(model, device)
    mm = layer(prof, "Loop_0/body/mm")
    assert mm["runs"] == 3 and mm["macs"] == 48 and mm["ops"] == 96
    assert prof.totals["macs"] == 48
    assert layer(prof, "Loop_0")["note"] == "trip count 3: body counted 3 times"
    # the latency of the body layer is three times that of the same MatMul run once
    once = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm")], "g",
                                               [vi("x", [1, 4])], [vi("h", [1, 4])], [w]),
                             opset_imports=[helper.make_opsetid("", 17)])
    single = layer(profile_model(once, device), "mm")["est_latency_ms"]
    assert mm["est_latency_ms"] == pytest.approx(3 * single)


def test_unknown_custom_op_is_costed_element_wise_and_listed():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mystery", ["r"], ["m", "n"], name="odd", domain="custom.ops"),
             helper.make_node("Add", ["m", "n"], ["y"], name="after")]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 64])], [vi("y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    prof = profile_model(model, load_device("myriadx"))
    odd, after = layer(prof, "odd"), layer(prof, "after")
    assert odd["counted"] is False and odd["estimated"] is True
    assert odd["ops"] == 64 and "element-wise on its inputs" in odd["note"]  # output unknown: input elements
    # m, n and y have no known size: each stands in as the largest known activation (64 floats)
    assert set(odd["unknown_activations"]) == {"m", "n"} and after["ops"] == 64
    t = prof.totals
    assert t["estimated_ops"] == {"Add": 1, "Mystery": 1} and t["uncounted_ops"] == {"Add": 1, "Mystery": 1}
    assert t["coverage"] == pytest.approx(1 / 3)
    assert t["est_latency_ms"] > 0 and t["est_energy_mj"] > 0
    # at 'after', m + n + y are live: 3 x 256 conservatively; x + r (512) is all that is known
    assert t["peak_activation_bytes"] == 3 * 256 and t["peak_activation_unknown_tensors"] == 3
    assert t["peak_activation_lower_bound"] == 2 * 256


def test_mac_layer_with_unknown_output_is_bounded_from_its_inputs():
    # a Conv whose output shape inference cannot give (fed by a custom op with a known input)
    nodes = [helper.make_node("Mystery", ["x"], ["m"], name="odd", domain="custom.ops"),
             helper.make_node("Conv", ["m", "w"], ["y"], name="conv", pads=[1, 1])]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 2, 16])], [vi("y", None)], [f32("w", [3, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    prof = profile_model(model, load_device("myriadx"))
    conv = layer(prof, "conv")
    # m unknown: taken as the largest known activation (32 elements) x Cin/group 2 x kernel 3
    assert conv["estimated"] and conv["macs"] == 32 * 2 * 3
    assert prof.totals["estimated_macs"] == 32 * 2 * 3 and prof.totals["macs"] == 0


def test_conv_transpose_counts_on_the_input_side():
    # PP-OCRv4 det's 2x2 stride-2 ConvTranspose: [1, 24, 160, 160] in, 24 out: 59.0 M MACs
    # (a Conv-over-the-output count would say 4x as many)
    assert layer_macs("ConvTranspose", [1, 24, 160, 160], [24, 24, 2, 2], [1, 24, 320, 320]) == 58_982_400
    # grouped, 1-D: x [1, 4, 5], W [4, 3, 3] (Cin x Cout/group x k), group 2 -> Cout 6
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", group=2, strides=[2])
    graph = helper.make_graph([node], "g", [vi("x", [1, 4, 5])], [vi("y", None)], [f32("w", [4, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = run(model, {"x": RNG.standard_normal((1, 4, 5)).astype(np.float32)})[0]
    assert y.shape == (1, 6, 11)
    # each of the 4 x 5 input elements meets Cout/group 3 x kernel 3 weights: 180 MACs
    assert layer(profile_model(model), "ct")["macs"] == 4 * 5 * 3 * 3 == 180


def test_mac_rule_for_1d_grouped_convs_and_vector_matmuls():
    assert layer_macs("Conv", [1, 4, 10], [6, 2, 3], [1, 6, 8]) == 48 * 6  # 1-D, group 2
    assert layer_macs("MatMul", [5], None, [7]) == 35  # vector @ matrix
    assert layer_macs("MatMul", [3, 2, 5], None, [3, 2]) == 30  # batched matrix @ vector
