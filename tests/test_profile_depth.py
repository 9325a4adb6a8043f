"""Reduction depth and grouped convs in the cost model (profile/shapeclass.py).

A GEMM kernel pays its tile set-up once per reduction, so at the same MACs a shallow 1x1 (16 input
channels, MobileNet v2's bottleneck) runs slower than a deep one; a grouped 3x3 is its own class
(`grouped`), a grouped 1x1 is `pointwise`; both are priced with their per-group channels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.devices import load_device
from edgeopt.devices.model import Figure
from edgeopt.profile.profiler import profile_model
from edgeopt.profile.shapeclass import cost_class, depth_utilization, lane_utilization, reduction_depth


def conv_model(cin: int, cout: int, k: int = 1, group: int = 1, hw: int = 28) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(cout, cin // group, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[k // 2] * 4, group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def conv_layer(model, device):
    prof = profile_model(model, device)
    return next(layer for layer in prof.layers if layer.get("op_type") == "Conv")


def test_grouped_convs_are_their_own_class_with_per_group_channels():
    pointwise = conv_model(240, 240, k=1, group=3).graph.node[0]
    assert cost_class(pointwise, "conv", [240, 80, 1, 1]) == "pointwise"  # group GEMMs
    assert cost_class(conv_model(64, 64, k=3, group=8).graph.node[0], "conv", [64, 8, 3, 3]) == "grouped"
    assert cost_class(conv_model(64, 64, k=3).graph.node[0], "conv", [64, 64, 3, 3]) == "conv3x3"
    # 240 / 3 = 80 output channels per group fill 16-lane vectors exactly; 60 / 3 = 20 do not (20 / 32)
    assert lane_utilization(pointwise, "pointwise", [240, 80, 1, 1], 16) == 1.0
    assert lane_utilization(pointwise, "pointwise", [60, 80, 1, 1], 16) == pytest.approx(20 / 32)
    # a CPU runs its lanes along the outputs: the reduction (90 of 96 lanes) does not pad there
    assert lane_utilization(pointwise, "pointwise", [60, 90, 1, 1], 16, reduction_lanes=False) == pytest.approx(20 / 32)
    assert reduction_depth(pointwise, "pointwise", [240, 80, 1, 1]) == 80
    grouped = conv_model(64, 64, k=3, group=8).graph.node[0]  # 8 in, 8 out per group: 8-lane vectors full
    assert lane_utilization(grouped, "grouped", [64, 8, 3, 3], 8) == 1.0
    assert reduction_depth(grouped, "grouped", [64, 8, 3, 3]) == 72
    assert reduction_depth(pointwise, "depthwise", [240, 1, 3, 3]) is None
    assert depth_utilization(16, 16.0) == 0.5 and depth_utilization(None, 16.0) == 1.0


def test_a_shallow_reduction_costs_more_at_the_same_macs():
    device = load_device("rpi4-ncnn-fp16-4t")
    half = device.depth_half.value
    assert device.depth_half.mark == "C" and 2 < half < 200  # fitted to the published rows
    shallow, deep = conv_model(16, 256), conv_model(256, 16)  # the same MACs: 28 x 28 x 16 x 256
    a, b = conv_layer(shallow, device), conv_layer(deep, device)
    assert a["macs"] == b["macs"]
    assert (a["reduction_depth"], b["reduction_depth"]) == (16, 256)
    assert a["depth_utilization"] == pytest.approx(16 / (16 + half), rel=1e-3)
    want = (16 + half) / 16 / ((256 + half) / 256)
    assert a["compute_ms"] / b["compute_ms"] == pytest.approx(want, rel=1e-6)
    flat = dataclasses.replace(device, depth_half=Figure())  # no depth figure: depth does not matter
    a, b = conv_layer(shallow, flat), conv_layer(deep, flat)
    assert "depth_utilization" not in a
    assert a["compute_ms"] == pytest.approx(b["compute_ms"], rel=1e-9)


def test_the_stem_pads_lanes_where_the_reduction_spans_them():
    stem = conv_model(3, 64, k=7, hw=56)  # Cin 3: the first conv of an image model
    host, rpi = load_device("host"), load_device("rpi4-ncnn-fp16-4t")
    assert host.reduction_lanes is False and rpi.reduction_lanes is True
    assert "lane_utilization" not in conv_layer(stem, host)  # onnxruntime's NCHWc kernel: lanes on outputs
    assert conv_layer(stem, rpi)["lane_utilization"] == pytest.approx(3 / rpi.alignment_for("fp16"))


def test_data_movement_has_its_own_class_falling_back_to_elementwise():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    node = helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[0, 2, 3, 1])
    model = helper.make_model(helper.make_graph([node], "t", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                              opset_imports=[helper.make_opsetid("", 13)])
    device = load_device("rpi4-ncnn-fp16-4t")
    plain = dataclasses.replace(device, efficiency={k: v for k, v in device.efficiency.items() if k != "data"})
    assert plain.efficiency_for("data") == device.efficiency_for("elementwise")
    slow = dataclasses.replace(device, efficiency={**device.efficiency, "data": Figure(plain.efficiency_for("data") / 4)})
    a, b = (next(l for l in profile_model(model, d).layers if l["op_type"] == "Transpose") for d in (plain, slow))
    assert a["cost_class"] == "data" and b["compute_ms"] == pytest.approx(4 * a["compute_ms"])
