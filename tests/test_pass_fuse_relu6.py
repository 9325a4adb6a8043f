"""fuse_relu6 on tiny graphs: each ReLU6 and hard-swish form, structure and onnxruntime numbers."""

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

FUSE = get_pass("fuse_relu6")
TOL = 1e-5
SHAPE = ["N", 4, 5, 5]


def const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def make(nodes, inits=(), opset=13, out_shape=SHAPE, inputs=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def fuse(model: onnx.ModelProto, **params):
    before = model.SerializeToString(deterministic=True)
    result = FUSE().apply(model, FUSE.Params(**params), PassContext())
    assert model.SerializeToString(deterministic=True) == before, "the pass mutated its input"
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def feeds(shape=(3, 4, 5, 5)):
    # spans both clamp bounds and the hard-swish knees at -3 and 3
    return {"x": (np.random.default_rng(0).standard_normal(shape) * 5).astype(np.float32)}


def assert_same(a, b, data=None, tol=TOL) -> float:
    data = data or feeds()
    ra, rb = make_session(a).run(None, data), make_session(b).run(None, data)
    err = max(float(np.max(np.abs(x - y))) for x, y in zip(ra, rb))
    assert err <= tol, f"max abs error {err} > {tol}"
    return err


def clip_bounds(model: onnx.ModelProto) -> tuple[float | None, float | None]:
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    if len(clip.input) == 1:  # opset < 11: attributes
        a = {x.name: x.f for x in clip.attribute}
        return a.get("min"), a.get("max")
    lo, hi = (list(clip.input) + ["", ""])[1:3]
    assert (not lo or inits[lo].shape == ()) and (not hi or inits[hi].shape == ())  # scalar initializers
    return (float(inits[lo]) if lo else None), (float(inits[hi]) if hi else None)


RELU6_FORMS = {
    "relu_min": ([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                  helper.make_node("Min", ["r", "six"], ["y"], name="min")], [const("six", 6.0)]),
    "max_min": ([helper.make_node("Max", ["x", "zero"], ["r"], name="max"),
                 helper.make_node("Min", ["six", "r"], ["y"], name="min")], [const("zero", 0.0), const("six", 6.0)]),
    "min_max": ([helper.make_node("Min", ["x", "six"], ["r"], name="min"),
                 helper.make_node("Max", ["r", "zero"], ["y"], name="max")], [const("zero", 0.0), const("six", 6.0)]),
    "relu_clip": ([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                   helper.make_node("Clip", ["r", "zero", "six"], ["y"], name="clip")],
                  [const("zero", 0.0), const("six", 6.0)]),
    "broadcast_1111": ([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("Min", ["r", "six"], ["y"], name="min")],
                       [const("six", np.full((1, 1, 1, 1), 6.0))]),
}


@pytest.mark.parametrize("opset", [11, 12, 13, 17])
@pytest.mark.parametrize("form", sorted(RELU6_FORMS))
def test_relu6_forms_become_one_clip_with_initializer_bounds(form, opset):
    nodes, inits = RELU6_FORMS[form]
    model = make(nodes, inits, opset)
    result = fuse(model)
    assert ops(result.model) == Counter({"Clip": 1})
    assert clip_bounds(result.model) == (0.0, 6.0)
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert result.notes[0].action == "fused" and "Clip(0, 6)" in result.notes[0].reason
    assert_same(model, result.model)


@pytest.mark.parametrize("opset", [8, 9, 10])
def test_relu_min_below_opset_11_becomes_clip_with_attributes(opset):
    nodes, inits = RELU6_FORMS["relu_min"]
    model = make(nodes, inits, opset)
    result = fuse(model)
    assert ops(result.model) == Counter({"Clip": 1})
    assert clip_bounds(result.model) == (0.0, 6.0)
    assert not result.model.graph.initializer
    assert_same(model, result.model)


def test_attribute_clip_before_opset_11_is_already_canonical():
    model = make([helper.make_node("Clip", ["x"], ["y"], name="clip", min=0.0, max=6.0)], opset=9)
    result = fuse(model)
    assert not result.modified and result.model is model


def test_clip_with_constant_node_bounds_gets_initializer_bounds():
    nodes = [helper.make_node("Constant", [], ["lo"], name="c0", value=numpy_helper.from_array(np.float32(0.0))),
             helper.make_node("Constant", [], ["hi"], name="c6", value_float=6.0),
             helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")]
    model = make(nodes, opset=13)
    result = fuse(model)
    assert ops(result.model) == Counter({"Clip": 1})
    assert clip_bounds(result.model) == (0.0, 6.0)
    assert_same(model, result.model)


def test_relu_with_constant_node_min_fuses():
    nodes = [helper.make_node("Constant", [], ["six"], name="c6", value=numpy_helper.from_array(np.float32(6.0))),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Min", ["r", "six"], ["y"], name="min")]
    model = make(nodes, opset=11)
    result = fuse(model)
    assert ops(result.model) == Counter({"Clip": 1})
    assert_same(model, result.model)


def test_relu_with_a_second_reader_is_not_merged():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Min", ["r", "six"], ["m"], name="min"),
             helper.make_node("Add", ["m", "r"], ["y"], name="add")]
    model = make(nodes, [const("six", 6.0)])
    result = fuse(model)
    assert ops(result.model) == Counter({"Relu": 1, "Min": 1, "Add": 1})
    assert_same(model, result.model)


def test_per_channel_min_is_not_a_relu6():
    nodes, _ = RELU6_FORMS["relu_min"]
    model = make(nodes, [const("six", np.arange(1, 5, dtype=np.float32).reshape(1, 4, 1, 1))])
    assert ops(fuse(model).model) == Counter({"Relu": 1, "Min": 1})


def test_min_constant_that_would_broadcast_the_shape_up_is_left():
    nodes, _ = RELU6_FORMS["relu_min"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])]
    model = make(nodes, [const("six", np.full((1, 1, 1), 6.0))], out_shape=[1, 4, 5], inputs=inputs)
    assert ops(fuse(model).model) == Counter({"Relu": 1, "Min": 1})


def test_disjoint_bounds_are_not_merged():
    nodes = [helper.make_node("Min", ["x", "one"], ["r"], name="min"),
             helper.make_node("Max", ["r", "two"], ["y"], name="max")]
    model = make(nodes, [const("one", 1.0), const("two", 2.0)])
    result = fuse(model)
    assert ops(result.model) == Counter({"Min": 1, "Max": 1})
    assert_same(model, result.model)


HSWISH_FORMS = {
    "hardsigmoid_x": ([helper.make_node("HardSigmoid", ["x"], ["h"], name="hsig", alpha=1 / 6, beta=0.5),
                       helper.make_node("Mul", ["x", "h"], ["y"], name="mul")], []),
    "x_hardsigmoid": ([helper.make_node("HardSigmoid", ["x"], ["h"], name="hsig", alpha=0.16666667, beta=0.5),
                       helper.make_node("Mul", ["h", "x"], ["y"], name="mul")], []),
    "mul_then_div": ([helper.make_node("Add", ["x", "three"], ["a"], name="add"),
                      helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
                      helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
                      helper.make_node("Div", ["m", "six"], ["y"], name="div")],
                     [const("three", 3.0), const("zero", 0.0), const("six", 6.0)]),
    "div_then_mul": ([helper.make_node("Add", ["three", "x"], ["a"], name="add"),
                      helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
                      helper.make_node("Div", ["c", "six"], ["d"], name="div"),
                      helper.make_node("Mul", ["d", "x"], ["y"], name="mul")],
                     [const("three", 3.0), const("zero", 0.0), const("six", 6.0)]),
    "relu_min_then_mul_sixth": ([helper.make_node("Add", ["x", "three"], ["a"], name="add"),
                                 helper.make_node("Relu", ["a"], ["r"], name="relu"),
                                 helper.make_node("Min", ["r", "six"], ["c"], name="min"),
                                 helper.make_node("Mul", ["c", "x"], ["m"], name="mul"),
                                 helper.make_node("Mul", ["m", "sixth"], ["y"], name="scale")],
                                [const("three", 3.0), const("six", 6.0), const("sixth", 1 / 6)]),
}


@pytest.mark.parametrize("form", sorted(HSWISH_FORMS))
def test_hardswish_forms_at_opset_14(form):
    nodes, inits = HSWISH_FORMS[form]
    model = make(nodes, inits, opset=14)
    result = fuse(model)
    assert ops(result.model) == Counter({"HardSwish": 1})
    assert not result.model.graph.initializer
    assert any(n.action == "fused" and n.op_type == "HardSwish" for n in result.notes)
    assert_same(model, result.model)


@pytest.mark.parametrize("form", sorted(HSWISH_FORMS))
def test_hardswish_forms_below_opset_14_are_left_with_a_reason(form):
    nodes, inits = HSWISH_FORMS[form]
    model = make(nodes, inits, opset=13)
    result = fuse(model)
    assert "HardSwish" not in ops(result.model)
    skipped = [n for n in result.notes if n.action == "skipped"]
    assert len(skipped) == 1 and "opset 14" in skipped[0].reason and "opset 13" in skipped[0].reason
    if form == "relu_min_then_mul_sixth":  # the ReLU6 inside is still made canonical
        assert ops(result.model)["Clip"] == 1 and "Relu" not in ops(result.model)
    assert_same(model, result.model)


def test_hardswish_off_leaves_the_forms():
    nodes, inits = HSWISH_FORMS["hardsigmoid_x"]
    model = make(nodes, inits, opset=14)
    assert ops(fuse(model, hardswish=False).model) == Counter({"HardSigmoid": 1, "Mul": 1})


def test_hardsigmoid_with_other_alpha_is_not_a_hardswish():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hsig", alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["x", "h"], ["y"], name="mul")]
    model = make(nodes, opset=14)
    assert ops(fuse(model).model) == Counter({"HardSigmoid": 1, "Mul": 1})


def conv_act(act_nodes, inits, extra_reader=False, opset=13):
    rng = np.random.default_rng(1)
    w = const("w", rng.standard_normal((4, 4, 3, 3)) * 0.3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["x_conv"], name="conv3x3", pads=[1, 1, 1, 1])]
    nodes += [helper.make_node(n.op_type, [("x_conv" if i == "x" else i) for i in n.input], n.output, name=n.name)
              for n in act_nodes]
    if extra_reader:
        nodes[-1].output[0] = "y0"
        nodes.append(helper.make_node("Add", ["y0", "x_conv"], ["y"], name="add"))
    return make(nodes, list(inits) + [w], opset)


def test_conv_then_relu6_clip_is_marked_fused():
    nodes, inits = RELU6_FORMS["relu_min"]
    model = conv_act(nodes, inits)
    result = fuse(model)
    assert ops(result.model) == Counter({"Conv": 1, "Clip": 1})
    clip = next(n for n in result.model.graph.node if n.op_type == "Clip")
    assert {p.key: p.value for p in clip.metadata_props} == {"edgeopt.fused_with": "conv3x3"}
    assert_same(model, result.model)
    unmarked = fuse(model, mark_fused=False).model
    assert not next(n for n in unmarked.graph.node if n.op_type == "Clip").metadata_props


def test_conv_output_with_another_reader_is_not_marked():
    nodes, inits = RELU6_FORMS["relu_min"]
    model = conv_act(nodes, inits, extra_reader=True)
    result = fuse(model)
    clip = next(n for n in result.model.graph.node if n.op_type == "Clip")
    assert not clip.metadata_props
    assert_same(model, result.model)


def test_deterministic_bytes():
    nodes, inits = HSWISH_FORMS["relu_min_then_mul_sixth"]
    model = make(nodes, inits, opset=14)
    assert fuse(model).model.SerializeToString(deterministic=True) == \
        fuse(model).model.SerializeToString(deterministic=True)


def test_bad_parameter_is_rejected_with_its_location():
    doc = {"model": "m.onnx", "passes": [{"fuse_relu6": {"hardswish": "sometimes"}}]}
    with pytest.raises(UserError) as info:
        parse_recipe(doc, Path("r.yaml"))
    assert "passes[0].fuse_relu6.hardswish" in str(info.value)
