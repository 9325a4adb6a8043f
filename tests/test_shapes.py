"""The shape layer: fixing input dims, refreshing stale shapes, every value's shape (subgraphs too)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.graph.shapes import (data_dims, fix_input_shapes, infer_value_shapes, refresh_shapes,
                                  resolve_input_shapes)
from edgeopt.profile.graphinfo import analyze
from edgeopt.verify.check import ModelInvalid, check_model


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _cls_like() -> onnx.ModelProto:
    """Paddle-style: input [-1, 3, ?, ?], pooled, flattened by a graph-computed Reshape, MatMul, Softmax;
    the output and a value_info recorded with dim -1."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])], [w, shape],
                              value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, [-1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_fixing_the_batch_of_a_minus_one_export_passes_the_strict_checker_and_runs():
    model = _cls_like()
    fixed = fix_input_shapes(model, {"x": [8, 3, 48, 192]})
    check_model(fixed)  # stale -1 dims used to fail: "differ in dimension 0: (8) vs (-1)"
    dims = [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [8, 2] and fixed.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(vi.type.tensor_type.shape.dim[0].dim_value == 8 for vi in fixed.graph.value_info)
    x = np.random.default_rng(1).standard_normal((8, 3, 48, 192)).astype(np.float32)
    (out,) = _run(fixed, {"x": x})
    np.testing.assert_allclose(out, _run(model, {"x": x})[0], rtol=1e-6)
    assert out.shape == (8, 2)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [-1, 2]  # original kept


def test_refresh_drops_value_info_a_pass_left_wrong():
    model = fix_input_shapes(_cls_like(), {"x": [1, 3, 8, 8]})
    model.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 5  # a pass pruned... and forgot
    with pytest.raises(ModelInvalid):
        check_model(model)
    refresh_shapes(model)
    check_model(model)
    assert {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info}["m"] \
        == [1, 2]


def _shape_chain() -> onnx.ModelProto:
    """x [N, C, H, W] -> Reshape to [N, C*H*W] with the target computed by Shape -> Gather -> Concat,
    then a MatMul on the flattened features."""
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4, H, W] x) => (float[N, M] y) <int64[1] i0 = {0}, int64[1] m1 = {-1}> {
            s = Shape(x)
            n = Gather<axis = 0>(s, i0)
            t = Concat<axis = 0>(n, m1)
            f = Reshape(x, t)
            y = MatMul(f, w)
        }""")


def test_a_graph_computed_reshape_resolves():
    model = _shape_chain()
    model.graph.initializer.append(numpy_helper.from_array(np.ones((16, 3), np.float32), "w"))
    onnx.checker.check_model(model, full_check=True)
    values = infer_value_shapes(model, {"x": [2, 4, 2, 2]})
    assert values["f"] == (TensorProto.FLOAT, [2, 16])
    assert values["y"] == (TensorProto.FLOAT, [2, 3])
    assert values["t"] == (TensorProto.INT64, [2])


def test_a_data_dependent_shape_is_measured_by_one_onnxruntime_run():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 6] x, int64[1, 6] keep) => (float[K] y) {
            one = Constant<value = int64 {1}>()
            minus = Constant<value = int64[1] {-1}>()
            idx = NonZero(keep)
            col = Gather<axis = 0>(idx, one)
            flat = Reshape(x, minus)
            sel = Gather<axis = 0>(flat, col)
            y = Relu(sel)
        }""")
    onnx.checker.check_model(model)
    statically = infer_value_shapes(model, {"x": [1, 6], "keep": [1, 6]}, feeds={})
    # without real feeds the integer input is zeros: NonZero finds nothing, which is a real shape too
    assert statically["idx"] == (TensorProto.INT64, [2, 0])
    keep = np.array([[1, 0, 1, 1, 0, 0]], np.int64)
    values = infer_value_shapes(model, {"x": [1, 6], "keep": [1, 6]},
                                feeds={"x": np.zeros((3, 6), np.float32), "keep": np.repeat(keep, 3, 0)})
    assert values["idx"] == (TensorProto.INT64, [2, 3])
    assert values["sel"] == (TensorProto.FLOAT, [3]) and values["y"] == (TensorProto.FLOAT, [3])


def _if_conv() -> onnx.ModelProto:
    """A Conv inside each If branch, on the outer input whose W is free."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w")
    then = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c_then"], pads=[1, 1])], "then", [],
                             [helper.make_tensor_value_info("c_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c_else"], strides=[2])], "else", [],
                              [helper.make_tensor_value_info("c_else", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "T"]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_conv_inside_an_if_branch_gets_its_shapes():
    model = _if_conv()
    info = analyze(model, {"x": [1, 2, 10]})
    assert info.tensors["c_then"].shape == [1, 4, 10]
    assert info.tensors["c_else"].shape == [1, 4, 4]
    assert info.tensors["w"].shape == [4, 2, 3]
    x = np.ones((1, 2, 10), np.float32)
    assert _run(model, {"x": x, "cond": np.array(True)})[0].shape == (1, 4, 10)


def test_data_shapes_fix_free_dims_but_not_the_batch():
    model = _cls_like()
    with pytest.raises(UserError, match="dim 2 is dynamic"):
        resolve_input_shapes(model)
    data = {"x": np.zeros((20, 3, 48, 192), np.float32)}
    assert resolve_input_shapes(model, None, data) == {"x": [1, 3, 48, 192]}
    assert resolve_input_shapes(model, {"x": [2, 3, 8, 8]}, data) == {"x": [2, 3, 8, 8]}
    dims = data_dims(model, data)
    assert dims == {"x": [None, None, 48, 192]}
    fixed = fix_input_shapes(model, dims)
    check_model(fixed)
    x_dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in x_dims[1:]] == [3, 48, 192] and x_dims[0].dim_value == -1  # batch stays free
    assert _run(fixed, data)[0].shape == (20, 2)


def test_state_batched_on_axis_one_takes_the_batch_symbol():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[batch, T] x, float[2, batch, 4] s) => (float[2, batch, 4] y) { y = Identity(s) }""")
    data = {"x": np.zeros((5, 64), np.float32), "s": np.zeros((2, 5, 4), np.float32)}
    assert resolve_input_shapes(model, None, data) == {"x": [1, 64], "s": [2, 1, 4]}
    assert resolve_input_shapes(model, {"x": [1, 8]}) == {"x": [1, 8], "s": [2, 1, 4]}
