"""Channel dependency groups on hand-made graphs, and the pruned models they lead to (checked in onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.prune.core import PruneConfig, analyze_model, prune_model
from edgeopt.verify.runtime import make_session


class Net:
    """A tiny graph written node by node, with seeded weights."""

    def __init__(self, seed: int = 0, in_shape=("N", 3, 6, 6)):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.in_shape = in_shape

    def w(self, name: str, *shape, scale: float = 0.3) -> str:
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs, outputs, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, bias: bool = True,
             weight: str | None = None) -> str:
        ins = [x, weight or self.w(f"{name}.w", cout, cin // group, k, k)]
        if bias:
            ins.append(self.w(f"{name}.b", cout, scale=0.1))
        return self.node("Conv", ins, [name], name, pads=[k // 2] * 4, group=group)

    def model(self, outputs: list[tuple[str, list]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.in_shape))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    def head(self, x: str, channels: int, classes: int = 5) -> onnx.ModelProto:
        p = self.node("GlobalAveragePool", [x], ["gap"], "gap")
        f = self.node("Flatten", [p], ["flat"], "flatten")
        self.node("Gemm", [f, self.w("fc.w", classes, channels), self.w("fc.b", classes)], ["y"], "fc", transB=1)
        return self.model([("y", ["N", classes])])


def groups_by_sources(model):
    _, analysis = analyze_model(model)
    return {tuple(g.source_names): g for g in analysis.groups}


def run(model, x):
    return make_session(model).run(None, {"x": x})[0]


def weight_shape(model, node_name: str, index: int = 1) -> list[int]:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(i for i in model.graph.initializer if i.name == node.input[index])
    return list(init.dims)


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32)


def residual_net() -> onnx.ModelProto:
    net = Net()
    r1 = net.node("Relu", [net.conv("x", 3, 8, "conv1")], ["r1"], "relu1")
    r2 = net.node("Relu", [net.conv(r1, 8, 8, "conv2")], ["r2"], "relu2")
    a = net.node("Add", [net.conv(r2, 8, 8, "conv3"), r1], ["add"], "add")
    r3 = net.node("Relu", [a], ["r3"], "relu3")
    return net.head(net.conv(r3, 8, 16, "conv4"), 16)


def test_residual_add_ties_both_branches(x):
    model = residual_net()
    groups = groups_by_sources(model)
    assert set(groups) == {("conv1", "conv3"), ("conv2",), ("conv4",), ("fc",)}
    assert groups[("conv1", "conv3")].prunable
    assert [c.node.name for c in groups[("conv1", "conv3")].consumers] == ["conv2", "conv4"]
    assert "graph output" in groups[("fc",)].frozen[0]

    out = prune_model(model, PruneConfig(ratio=0.5))
    pruned = out.model
    onnx.checker.check_model(pruned, full_check=True)
    assert weight_shape(pruned, "conv1") == [4, 3, 3, 3]
    assert weight_shape(pruned, "conv2") == [4, 4, 3, 3]
    assert weight_shape(pruned, "conv3") == [4, 4, 3, 3]  # the Add's two inputs keep the same channels
    assert weight_shape(pruned, "conv4") == [8, 4, 3, 3]
    assert weight_shape(pruned, "fc") == [5, 8]
    y = run(pruned, x)
    assert y.shape == (4, 5) and np.all(np.isfinite(y))
    assert out.macs_after < out.macs_before


def test_zero_channels_are_removed_without_changing_outputs(x):
    """Channels whose weights (and bias) are all zero carry nothing: pruning them is exact."""
    model = residual_net()
    dead = {"conv1": [1, 5], "conv3": [1, 5], "conv2": [0, 3, 6], "conv4": [2, 9, 10, 15]}
    for init in model.graph.initializer:
        layer, kind = init.name.split(".")
        if layer in dead:
            arr = numpy_helper.to_array(init).copy()
            arr[dead[layer]] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    before = run(model, x)
    out = prune_model(model, PruneConfig(ratio={"conv1": 0.25, "conv2": 3 / 8, "conv4": 0.25}, balance=False))
    assert weight_shape(out.model, "conv1")[0] == 6
    assert weight_shape(out.model, "conv2")[0] == 5
    assert weight_shape(out.model, "conv4")[0] == 12
    after = run(out.model, x)
    # The removed terms are exact zeros; only onnxruntime's summation order over fewer input channels
    # differs, so the outputs agree to float32 rounding (a few ulp), not bit for bit.
    np.testing.assert_allclose(after, before, rtol=0, atol=2e-6)
    assert np.max(np.abs(after - before)) <= 4 * np.spacing(np.max(np.abs(before)))


def test_concat_lays_groups_side_by_side(x):
    net = Net()
    a = net.node("Relu", [net.conv("x", 3, 8, "conv_a")], ["ra"], "relu_a")
    b = net.node("Relu", [net.conv("x", 3, 6, "conv_b")], ["rb"], "relu_b")
    cat = net.node("Concat", [a, b], ["cat"], "cat", axis=1)
    model = net.head(net.node("Relu", [net.conv(cat, 14, 8, "conv_c")], ["rc"], "relu_c"), 8)
    groups = groups_by_sources(model)
    assert {("conv_a",), ("conv_b",), ("conv_c",), ("fc",)} == set(groups)
    assert [c.node.name for c in groups[("conv_a",)].consumers] == ["conv_c"]

    # Zero out channels 2 and 7 of conv_a and 0 of conv_b: conv_c must lose exactly columns 2, 7 and 8.
    for init in model.graph.initializer:
        if init.name in ("conv_a.w", "conv_a.b", "conv_b.w", "conv_b.b"):
            arr = numpy_helper.to_array(init).copy()
            arr[[2, 7] if init.name.startswith("conv_a") else [0]] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    before = run(model, x)
    out = prune_model(model, PruneConfig(ratio={"conv_a": 0.25, "conv_b": 1 / 6}, balance=False))
    assert weight_shape(out.model, "conv_c") == [8, 11, 3, 3]
    original_c = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv_c.w"))
    pruned_c = numpy_helper.to_array(next(i for i in out.model.graph.initializer
                                          if i.name == next(n for n in out.model.graph.node
                                                            if n.name == "conv_c").input[1]))
    np.testing.assert_array_equal(pruned_c, np.delete(original_c, [2, 7, 8], axis=1))
    np.testing.assert_array_equal(run(out.model, x), before)


def test_residual_concat_output_added_to_a_conv_splits_nothing_but_ties_segments(x):
    """Add(Concat(a, b), c): c's channels line up with a's then b's; different boundaries freeze."""
    net = Net()
    a = net.conv("x", 3, 4, "conv_a")
    b = net.conv("x", 3, 4, "conv_b")
    c = net.conv("x", 3, 8, "conv_c")
    cat = net.node("Concat", [a, b], ["cat"], "cat", axis=1)
    s = net.node("Add", [cat, c], ["sum"], "sum")
    model = net.head(net.conv(s, 8, 8, "conv_d"), 8)
    groups = groups_by_sources(model)
    # conv_c's 8 channels are one segment, the concat is two: the layouts differ, so all three freeze
    frozen = [g for names, g in groups.items() if names[0] in ("conv_a", "conv_b", "conv_c")]
    assert frozen and all(not g.prunable for g in frozen)
    assert any("laid out differently" in r for g in frozen for r in g.frozen)


def test_depthwise_chain_follows_its_input_and_changes_group(x):
    net = Net()
    e = net.node("Relu", [net.conv("x", 3, 16, "expand", k=1)], ["re"], "relu_e")
    d = net.node("Relu", [net.conv(e, 16, 16, "dw", group=16)], ["rd"], "relu_d")
    d2 = net.conv(d, 16, 16, "dw2", group=16, bias=False)
    model = net.head(net.conv(d2, 16, 8, "project", k=1), 8)
    groups = groups_by_sources(model)
    assert ("expand",) in groups and ("dw",) not in groups  # a depthwise conv produces no channels of its own
    assert [c.node.name for c in groups[("expand",)].consumers] == ["project"]

    out = prune_model(model, PruneConfig(ratio={"expand": 0.5}, balance=False))
    for name in ("dw", "dw2"):
        node = next(n for n in out.model.graph.node if n.name == name)
        assert next(a.i for a in node.attribute if a.name == "group") == 8
        assert weight_shape(out.model, name) == [8, 1, 3, 3]
    assert weight_shape(out.model, "project") == [8, 8, 1, 1]
    onnx.checker.check_model(out.model, full_check=True)
    assert run(out.model, x).shape == (4, 5)


def test_flatten_then_gemm_drops_columns_per_channel_and_position(x):
    net = Net()
    r = net.node("Relu", [net.conv("x", 3, 4, "conv")], ["r"], "relu")
    p = net.node("MaxPool", [r], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2])  # [N,4,3,3]
    f = net.node("Flatten", [p], ["f"], "flatten")
    net.node("Gemm", [f, net.w("fc.w", 36, 5), net.w("fc.b", 5)], ["y"], "fc")  # B is [K, M]
    model = net.model([("y", ["N", 5])])
    _, analysis = analyze_model(model)
    assert analysis.info["f"].inner == 9
    # channel 1 of conv is dead: the Gemm must lose rows 9..17 of B, nothing else
    for init in model.graph.initializer:
        if init.name in ("conv.w", "conv.b"):
            arr = numpy_helper.to_array(init).copy()
            arr[1] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    before = run(model, x)
    out = prune_model(model, PruneConfig(ratio=0.25))
    fc_w = numpy_helper.to_array(next(i for i in out.model.graph.initializer
                                      if i.name == next(n for n in out.model.graph.node if n.name == "fc").input[1]))
    orig_w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "fc.w"))
    np.testing.assert_array_equal(fc_w, np.delete(orig_w, range(9, 18), axis=0))
    np.testing.assert_array_equal(run(out.model, x), before)


def test_reshape_to_features_is_followed_and_its_target_rewritten(x):
    net = Net()
    r = net.node("Relu", [net.conv("x", 3, 4, "conv")], ["r"], "relu")
    f = net.node("Reshape", [r, net.const("shape", np.array([-1, 144], dtype=np.int64))], ["f"], "reshape")
    net.node("Gemm", [f, net.w("fc.w", 144, 5), net.w("fc.b", 5)], ["y"], "fc")
    model = net.model([("y", ["N", 5])])
    out = prune_model(model, PruneConfig(ratio=0.5))
    target = numpy_helper.to_array(next(i for i in out.model.graph.initializer
                                        if i.name == next(n for n in out.model.graph.node
                                                          if n.name == "reshape").input[1]))
    assert target.tolist() == [-1, 72]
    assert weight_shape(out.model, "fc") == [72, 5]
    assert run(out.model, x).shape == (4, 5)


def test_shared_weights_tie_producers_and_stay_shared(x):
    """Two convs reading one weight: their outputs are one space, and the weight stays one tensor."""
    net = Net()
    r0 = net.node("Relu", [net.conv("x", 3, 8, "conv0")], ["r0"], "relu0")
    shared = net.w("shared.w", 8, 8, 3, 3)
    a = net.node("Relu", [net.conv(r0, 8, 8, "conv_a", bias=False, weight=shared)], ["ra"], "relu_a")
    b = net.conv(a, 8, 8, "conv_b", bias=False, weight=shared)
    model = net.head(b, 8)
    groups = groups_by_sources(model)
    # conv_b reads conv_a's output with the weight whose input axis reads conv0's: all one group
    assert ("conv0", "conv_a", "conv_b") in groups
    out = prune_model(model, PruneConfig(ratio=0.5))
    nodes = {n.name: n for n in out.model.graph.node}
    assert nodes["conv_a"].input[1] == nodes["conv_b"].input[1]
    assert weight_shape(out.model, "conv_a") == [4, 4, 3, 3]
    assert run(out.model, x).shape == (4, 5)


def test_reshape_that_splits_channels_freezes_its_group(x):
    net = Net()
    c = net.conv("x", 3, 8, "conv")
    s = net.node("Reshape", [c, net.const("shape", np.array([0, 2, 4, 36], dtype=np.int64))], ["s"], "split_ch")
    m = net.node("ReduceMean", [s], ["m"], "mean", axes=[1], keepdims=0)  # [N,4,36]
    f = net.node("Flatten", [m], ["f"], "flatten")
    net.node("Gemm", [f, net.w("fc.w", 144, 5), net.w("fc.b", 5)], ["y"], "fc")
    model = net.model([("y", ["N", 5])])
    groups = groups_by_sources(model)
    assert not groups[("conv",)].prunable
    assert any("Reshape split_ch" in r and "splits the channels" in r for r in groups[("conv",)].frozen)
    out = prune_model(model, PruneConfig(ratio=0.5))
    assert out.macs_after == out.macs_before
    note = next(n for n in out.notes if n.node == "conv")
    assert note.action == "skipped" and "splits the channels" in note.reason


def test_split_with_fixed_sizes_freezes_and_says_why():
    net = Net()
    c = net.conv("x", 3, 8, "conv")
    net.node("Split", [c, net.const("sizes", np.array([3, 5], dtype=np.int64))], ["s1", "s2"], "split", axis=1)
    model = net.model([("s1", ["N", 3, 6, 6]), ("s2", ["N", 5, 6, 6])])
    groups = groups_by_sources(model)
    assert any("Split split splits the channels into fixed sizes" in r for r in groups[("conv",)].frozen)


def test_squeeze_excite_mul_ties_the_gate_to_the_features(x):
    net = Net()
    f = net.node("Relu", [net.conv("x", 3, 8, "conv")], ["f"], "relu")
    p = net.node("GlobalAveragePool", [f], ["p"], "se_pool")
    r = net.node("Relu", [net.conv(p, 8, 4, "se_reduce", k=1)], ["sr"], "se_relu")
    g = net.node("Sigmoid", [net.conv(r, 4, 8, "se_expand", k=1)], ["g"], "se_gate")
    s = net.node("Mul", [f, g], ["s"], "se_mul")
    model = net.head(net.conv(s, 8, 8, "conv2"), 8)
    groups = groups_by_sources(model)
    assert ("conv", "se_expand") in groups and groups[("conv", "se_expand")].prunable
    out = prune_model(model, PruneConfig(ratio=0.5, min_channels=1))
    assert weight_shape(out.model, "se_expand") == [4, 2, 1, 1]
    assert weight_shape(out.model, "conv2") == [4, 4, 3, 3]
    assert run(out.model, x).shape == (4, 5)


def test_per_channel_constants_and_batchnorm_follow(x):
    net = Net()
    c = net.conv("x", 3, 8, "conv")
    bn = net.node("BatchNormalization", [c, net.w("bn.s", 8), net.w("bn.b", 8), net.w("bn.m", 8),
                                         net.const("bn.v", np.ones(8, np.float32))], ["bn"], "bn")
    m = net.node("Mul", [bn, net.w("scale", 1, 8, 1, 1)], ["m"], "mul")
    a = net.node("Add", [m, net.w("shift", 8, 1, 1)], ["a"], "add")
    p = net.node("PRelu", [a, net.w("slope", 8, 1, 1)], ["pr"], "prelu")
    model = net.head(p, 8)
    before = run(model, x)
    out = prune_model(model, PruneConfig(ratio=0.5))
    shapes = {i.name: list(i.dims) for i in out.model.graph.initializer}
    node_inputs = {n.name: list(n.input) for n in out.model.graph.node}
    assert [shapes[n] for n in node_inputs["bn"][1:]] == [[4]] * 4
    assert shapes[node_inputs["mul"][1]] == [1, 4, 1, 1]
    assert shapes[node_inputs["add"][1]] == [4, 1, 1]
    assert shapes[node_inputs["prelu"][1]] == [4, 1, 1]
    assert run(out.model, x).shape == before.shape


def test_channels_reaching_an_unknown_op_are_frozen():
    net = Net()
    c = net.conv("x", 3, 8, "conv")
    net.node("LRN", [c], ["l"], "lrn", size=3)
    model = net.model([("l", ["N", 8, 6, 6])])
    groups = groups_by_sources(model)
    reasons = groups[("conv",)].frozen
    assert any("LRN lrn reads the channels" in r for r in reasons)


def test_gemm_and_matmul_units_are_pruned_like_channels(x):
    net = Net()
    f = net.node("Flatten", ["x"], ["f"], "flatten")
    h = net.node("MatMul", [f, net.w("mm.w", 108, 16)], ["h"], "matmul")
    hb = net.node("Add", [h, net.w("mm.b", 16)], ["hb"], "bias")
    r = net.node("Relu", [hb], ["r"], "relu")
    g = net.node("Gemm", [r, net.w("fc1.w", 12, 16), net.w("fc1.b", 12)], ["g"], "fc1", transB=1)
    r2 = net.node("Relu", [g], ["r2"], "relu2")
    net.node("Gemm", [r2, net.w("fc2.w", 12, 5), net.w("fc2.b", 1, 5)], ["y"], "fc2")
    model = net.model([("y", ["N", 5])])
    groups = groups_by_sources(model)
    assert {("matmul",), ("fc1",), ("fc2",)} == set(groups)
    assert not groups[("fc2",)].prunable
    out = prune_model(model, PruneConfig(ratio=0.25))
    shapes = {i.name: list(i.dims) for i in out.model.graph.initializer}
    ins = {n.name: list(n.input) for n in out.model.graph.node}
    assert shapes[ins["matmul"][1]] == [108, 12] and shapes[ins["bias"][1]] == [12]
    assert shapes[ins["fc1"][1]] == [9, 12] and shapes[ins["fc1"][2]] == [9]
    assert shapes[ins["fc2"][1]] == [9, 5] and shapes[ins["fc2"][2]] == [1, 5]
    onnx.checker.check_model(out.model, full_check=True)
    assert run(out.model, x).shape == (4, 5)


def test_a_conv_transpose_reading_the_channels_loses_its_input_rows(x):
    """A decoder's ConvTranspose reads the pruned channels on W's axis 0; dead channels go exactly."""
    net = Net()
    c = net.node("Relu", [net.conv("x", 3, 8, "enc")], ["r"], "relu")
    up = net.node("ConvTranspose", [c, net.w("up.w", 8, 4, 2, 2), net.w("up.b", 4, scale=0.1)], ["up"], "up",
                  strides=[2, 2])
    model = net.model([("up", ["N", 4, 12, 12])])
    dead = [0, 3, 4, 7]
    for init in model.graph.initializer:
        if init.name in ("enc.w", "enc.b"):
            arr = numpy_helper.to_array(init).copy()
            arr[dead] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    assert not groups_by_sources(model)[("enc",)].frozen
    before = run(model, x)
    out = prune_model(model, PruneConfig(ratio=0.5, balance=False))
    onnx.checker.check_model(out.model, full_check=True)
    assert weight_shape(out.model, "enc")[0] == 4 and weight_shape(out.model, "up") == [4, 4, 2, 2]
    np.testing.assert_allclose(run(out.model, x), before, rtol=0, atol=2e-6)


def test_a_grouped_conv_transpose_freezes_the_channels():
    net = Net()
    c = net.conv("x", 3, 8, "enc")
    net.node("ConvTranspose", [c, net.w("up.w", 8, 2, 2, 2)], ["up"], "up", strides=[2, 2], group=2)
    model = net.model([("up", ["N", 4, 12, 12])])
    assert any("grouped ConvTranspose" in r for r in groups_by_sources(model)[("enc",)].frozen)
