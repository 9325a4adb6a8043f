"""fold_batchnorm on tiny graphs: structure (node counts, op types) and numbers (onnxruntime before vs after)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session

FOLD = get_pass("fold_batchnorm")
TOL = 1e-5


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return make_session(model).run(None, feeds)


def fold(model: onnx.ModelProto, **params):
    before = model.SerializeToString(deterministic=True)
    result = FOLD().apply(model, FOLD.Params(**params), PassContext())
    assert model.SerializeToString(deterministic=True) == before, "the pass mutated its input"
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def bn_inits(rng, c: int, prefix: str = "bn", dtype=np.float32) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(dtype), f"{prefix}.scale"),
        numpy_helper.from_array((rng.standard_normal(c) * 0.5).astype(dtype), f"{prefix}.bias"),
        numpy_helper.from_array((rng.standard_normal(c) * 0.5).astype(dtype), f"{prefix}.mean"),
        numpy_helper.from_array(rng.uniform(0.5, 3.0, c).astype(dtype), f"{prefix}.var"),
    ]


def bn_node(x: str, y: str | list[str], prefix: str = "bn", **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")],
                            [y] if isinstance(y, str) else y, name=prefix, **attrs)


def make(nodes, inits, inputs, outputs, opset=13, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, elem, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict, tol: float = TOL) -> float:
    ra, rb = run(a, feeds), run(b, feeds)
    err = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(ra, rb))
    assert err <= tol, f"max abs error {err} > {tol}"
    return err


def image(shape=(2, 4, 6, 6), seed=1, dtype=np.float32):
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(dtype)}


def conv_bn(opset=13, bias=True, bn_attrs=None, seed=0, group=1, cin=4, cout=6, bn_outputs=("y",)) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group, 3, 3)) * 0.3
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
             bn_node("c", list(bn_outputs), **(bn_attrs or {}))]
    return make(nodes, inits + bn_inits(rng, cout), [("x", ["N", cin, 6, 6])], [("y", ["N", cout, 6, 6])], opset)


@pytest.mark.parametrize("opset,attrs", [(7, {"spatial": 1}), (9, {}), (13, {"epsilon": 1e-3}), (15, {}),
                                         (15, {"training_mode": 0})])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds_in_every_opset(opset, attrs, bias):
    model = conv_bn(opset, bias, attrs)
    result = fold(model)
    assert result.modified
    assert ops(result.model) == Counter({"Conv": 1})
    conv = result.model.graph.node[0]
    assert len(conv.input) == 3  # a bias was added when there was none
    assert [o.name for o in result.model.graph.output] == ["y"]  # the graph output keeps its name
    assert result.notes[0].action == "folded" and "Conv" in result.notes[0].reason
    assert_same(model, result.model, image())


def test_depthwise_conv_folds():
    model = conv_bn(group=4, cin=4, cout=8)
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 1})
    assert_same(model, result.model, image())


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_folds_on_axis_1_group_aware(group):
    rng = np.random.default_rng(3)
    cin, cout = 4, 6
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout // group, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")] + bn_inits(rng, cout)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], name="deconv", group=group, strides=[2, 2]),
             bn_node("c", "y")]
    model = make(nodes, inits, [("x", ["N", cin, 5, 5])], [("y", ["N", cout, 11, 11])])
    result = fold(model)
    assert ops(result.model) == Counter({"ConvTranspose": 1})
    assert_same(model, result.model, image((2, cin, 5, 5)))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias,beta", [(True, 1.0), (True, 0.5), (False, 1.0), (True, 0.0)])
def test_gemm_folds_respecting_transb_and_beta(trans_b, bias, beta):
    rng = np.random.default_rng(4)
    k, n = 5, 7
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")] + bn_inits(rng, n)
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "c"))
        inputs.append("c")
    nodes = [helper.make_node("Gemm", inputs, ["g"], name="fc", transB=trans_b, beta=beta, alpha=0.7),
             bn_node("g", "y")]
    model = make(nodes, inits, [("x", ["N", k])], [("y", ["N", n])])
    result = fold(model)
    assert ops(result.model) == Counter({"Gemm": 1})
    assert_same(model, result.model, image((3, k)))


def test_matmul_with_constant_weight_gets_weight_scaled_and_a_bias_add():
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 7)).astype(np.float32), "w")] + bn_inits(rng, 7)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), bn_node("m", "y")]
    model = make(nodes, inits, [("x", ["N", 5])], [("y", ["N", 7])])
    result = fold(model)
    assert ops(result.model) == Counter({"MatMul": 1, "Add": 1})
    assert_same(model, result.model, image((3, 5)))


def test_matmul_on_rank_3_input_is_not_folded_on_the_wrong_axis():
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 7)).astype(np.float32), "w")] + bn_inits(rng, 4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), bn_node("m", "y")]
    model = make(nodes, inits, [("x", ["N", 4, 5])], [("y", ["N", 4, 7])])
    result = fold(model)
    assert ops(result.model) == Counter({"MatMul": 1, "Mul": 1, "Add": 1})
    assert "rank 3" in result.notes[0].reason
    assert_same(model, result.model, image((2, 4, 5)))


def test_bn_after_add_becomes_mul_add():
    rng = np.random.default_rng(7)
    inits = bn_inits(rng, 4)
    nodes = [helper.make_node("Add", ["x", "x2"], ["s"], name="residual"), bn_node("s", "y")]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6]), ("x2", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Add": 2, "Mul": 1})
    note = result.notes[0]
    assert note.action == "decomposed" and "Add" in note.reason
    mul = next(n for n in result.model.graph.node if n.op_type == "Mul")
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert inits[mul.input[1]].shape == (4, 1, 1)  # per channel, broadcast on axis 1
    feeds = {**image(), "x2": image(seed=9)["x"]}
    assert_same(model, result.model, feeds)
    off = fold(model, decompose_unfoldable=False)
    assert not off.modified and ops(off.model)["BatchNormalization"] == 1
    assert off.notes[0].action == "skipped"


def test_bn_on_graph_input_becomes_mul_add():
    rng = np.random.default_rng(8)
    model = make([bn_node("x", "y")], bn_inits(rng, 4), [("x", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Mul": 1, "Add": 1})
    assert "graph input" in result.notes[0].reason
    assert_same(model, result.model, image())


def test_shared_weight_is_copied_never_corrupted():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")] + bn_inits(rng, 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             bn_node("c1", "y1"),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2", pads=[1, 1, 1, 1])]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6])], [("y1", ["N", 4, 6, 6]), ("y2", ["N", 4, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 2})
    inits_after = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    conv2 = next(n for n in result.model.graph.node if n.name == "conv2")
    conv1 = next(n for n in result.model.graph.node if n.name == "conv1")
    np.testing.assert_array_equal(inits_after[conv2.input[1]], w)
    assert conv1.input[1] != conv2.input[1]
    assert not np.array_equal(inits_after[conv1.input[1]], w)
    assert_same(model, result.model, image())


def test_constant_node_weights_are_folded():
    rng = np.random.default_rng(11)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    consts = [helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w))]
    for t in bn_inits(rng, 6):
        consts.append(helper.make_node("Constant", [], [t.name], name=t.name + "_const", value=t))
    nodes = consts + [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn_node("c", "y")]
    model = make(nodes, [], [("x", ["N", 4, 6, 6])], [("y", ["N", 6, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 1})
    assert len(result.model.graph.node) < len(model.graph.node)
    assert_same(model, result.model, image())


@pytest.mark.parametrize("when_shared,expected", [
    ("mul_add", Counter({"Conv": 1, "Mul": 1, "Add": 1, "Relu": 1})),
    ("copy", Counter({"Conv": 2, "Relu": 1})),
    ("skip", Counter({"Conv": 1, "BatchNormalization": 1, "Relu": 1})),
])
def test_producer_with_another_reader(when_shared, expected):
    rng = np.random.default_rng(12)
    w = rng.standard_normal((4, 4, 3, 3)) * 0.3
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")] + bn_inits(rng, 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn_node("c", "y"), helper.make_node("Relu", ["c"], ["r"], name="other_reader")]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6]), ("r", ["N", 4, 6, 6])])
    result = fold(model, when_shared=when_shared)
    assert ops(result.model) == expected
    assert "other_reader" in result.notes[0].reason
    assert_same(model, result.model, image())


def test_training_mode_bn_is_skipped_with_reason():
    model = conv_bn(15, bn_attrs={"training_mode": 1}, bn_outputs=("y", "running_mean", "running_var"))
    result = fold(model)
    assert not result.modified and result.model is model
    assert result.notes[0].action == "skipped" and "training_mode=1" in result.notes[0].reason


def test_spatial_0_bn_is_skipped_with_reason():
    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(rng.uniform(0.5, 2, (4, 6, 6)).astype(np.float32), f"bn.{k}")
              for k in ("scale", "bias", "mean", "var")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn_node("c", "y", spatial=0)]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6])], opset=7)
    result = fold(model)
    assert not result.modified
    assert "spatial=0" in result.notes[0].reason


def test_conv_with_weight_as_graph_input_becomes_mul_add():
    rng = np.random.default_rng(14)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn_node("c", "y")]
    model = make(nodes, bn_inits(rng, 4), [("x", ["N", 4, 6, 6]), ("w", [4, 4, 3, 3])], [("y", ["N", 4, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 1, "Mul": 1, "Add": 1})
    assert "not a constant" in result.notes[0].reason
    feeds = {**image(), "w": rng.standard_normal((4, 4, 3, 3)).astype(np.float32)}
    assert_same(model, result.model, feeds)


def test_float16_weights_stay_float16():
    rng = np.random.default_rng(15)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float16), "w")]
    inits += bn_inits(rng, 4, dtype=np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn_node("c", "y")]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6])], elem=TensorProto.FLOAT16)
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 1})
    assert {i.data_type for i in result.model.graph.initializer} == {TensorProto.FLOAT16}
    assert_same(model, result.model, image(dtype=np.float16), tol=0.05)  # float16 rounding of the outputs


def test_chain_of_two_bns_both_fold():
    rng = np.random.default_rng(16)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")]
    inits += bn_inits(rng, 4, "bn1") + bn_inits(rng, 4, "bn2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn_node("c", "m", "bn1"), bn_node("m", "y", "bn2")]
    model = make(nodes, inits, [("x", ["N", 4, 6, 6])], [("y", ["N", 4, 6, 6])])
    result = fold(model)
    assert ops(result.model) == Counter({"Conv": 1})
    assert_same(model, result.model, image())


def test_deterministic_bytes():
    model = conv_bn()
    a = fold(model).model.SerializeToString(deterministic=True)
    b = fold(model).model.SerializeToString(deterministic=True)
    assert a == b


def test_bad_parameter_is_rejected_with_its_location():
    doc = {"model": "m.onnx", "passes": [{"fold_batchnorm": {"when_shared": "duplicate"}}]}
    with pytest.raises(UserError) as info:
        parse_recipe(doc, Path("r.yaml"))
    message = str(info.value)
    assert "passes[0].fold_batchnorm.when_shared" in message and "'mul_add'" in message
