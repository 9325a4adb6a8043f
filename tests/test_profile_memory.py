"""Liveness and fusion on a hand-made graph, with the peaks computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.devices import parse_device
from edgeopt.profile import profile_model


def skip_graph():
    """x (1x4x8x8, 1024 B) -> conv1 (8 ch, 2048 B) -> relu (2048 B) -> conv2 (4 ch, 1024 B) -> add(+x)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def toy(fuses, onchip=None):
    return parse_device({"name": "toy", "precisions": ["fp32"], "peak_gops": {"fp32": 100}, "dram_gbps": 10,
                         "onchip_bytes": onchip, "fuses": fuses}, "toy.yaml")


def test_peak_without_fusion():
    # step 0 conv1: x + c1 = 3072; step 1 relu: x + c1 + r1 = 5120 (peak);
    # step 2 conv2: x + r1 + c2 = 4096; step 3 add: x + c2 + y = 3072
    prof = profile_model(skip_graph(), None)
    assert prof.totals["peak_activation_bytes"] == 5120
    assert prof.totals["peak_activation_at"] == "relu"
    names = [t["name"] for t in prof.totals["peak_activation_tensors"]]
    assert sorted(names) == ["c1", "r1", "x"]


def test_fused_relu_is_never_materialized():
    # conv1+relu run as one step writing r1: x + r1 = 3072; conv2: x + r1 + c2 = 4096 (peak)
    prof = profile_model(skip_graph(), toy(["Relu"]))
    assert prof.totals["peak_activation_bytes"] == 4096
    assert prof.totals["peak_activation_at"] == "conv2"
    relu = next(l for l in prof.layers if l["name"] == "relu")
    assert relu["fused_into"] == "conv1" and relu["bound"] == "fused" and relu["est_latency_ms"] == 0


def test_fused_residual_add():
    # Add fused into conv2 too: x + r1 + y at the conv2+add step = 4096
    prof = profile_model(skip_graph(), toy(["Relu", "Add"]))
    assert prof.totals["peak_activation_bytes"] == 4096
    add = next(l for l in prof.layers if l["name"] == "add")
    assert add["fused_into"] == "conv2"
    assert prof.totals["fused_layers"] == 2


def test_working_set_fits_onchip_per_layer():
    # weights 1152 + 1152 B = 2304 B (resident when they fit);
    # conv1 group working set: x 1024 + r1 2048 (+ weights 1152)
    prof = profile_model(skip_graph(), toy(["Relu"], onchip=2304 + 3072))
    conv1 = next(l for l in prof.layers if l["name"] == "conv1")
    assert conv1["working_set_bytes"] == 1024 + 2048 + 1152
    assert conv1["fits_onchip"] is True
    assert prof.totals["weights_fit_onchip"] is True
    small = profile_model(skip_graph(), toy(["Relu"], onchip=2000))
    assert all(l["fits_onchip"] is False for l in small.layers if l["bound"] not in ("fused",))
    assert small.totals["weights_fit_onchip"] is False


def gated_graph(gate: str, se: bool = False):
    """conv (8 ch, 2048 B) -> x * gate(x); with se=True the gate reads another tensor (a squeeze-excitation
    gate, Mul(x, gate(s))), which is no activation of x."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if se:
        nodes.append(helper.make_node("GlobalAveragePool", ["c"], ["s"], name="pool"))
    nodes += [helper.make_node(gate, ["s" if se else "c"], ["g"], name="gate"),
              helper.make_node("Mul", ["c", "g"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_gated_activation_is_one_layer_whatever_the_device_fuses():
    for gate, gate_ops in (("Sigmoid", 4), ("HardSigmoid", 3)):
        prof = profile_model(gated_graph(gate), toy([]))
        layers = {layer["name"]: layer for layer in prof.layers}
        assert layers["gate"]["fused_into"] == "mul" and layers["gate"]["est_latency_ms"] == 0.0
        mul = layers["mul"]
        assert mul["ops"] == 512  # the Mul's own ops; the gate's run in the same layer (100 GOPS, efficiency 1)
        assert mul["compute_ms"] == pytest.approx(512 * (1 + gate_ops) / 100e9 * 1e3)
        # one pass: reads c (2048 B) and writes y (2048 B); g is never written
        assert mul["working_set_bytes"] == 4096
        assert prof.totals["peak_activation_bytes"] == 1024 + 2048 + 2048 - 1024  # x freed after conv: c + y
    se = {layer["name"]: layer for layer in profile_model(gated_graph("Sigmoid", se=True), toy([])).layers}
    assert "fused_into" not in se["gate"]  # a gate of another tensor stays its own layer
