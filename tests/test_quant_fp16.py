"""convert_fp16 on tiny graphs: float16 weights, float32 inputs/outputs, blocked ops, onnxruntime numbers."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session
from test_quant_weights import run, stored_bytes, toy_model

pytest.importorskip("onnxconverter_common")


def apply(model, **params):
    cls = get_pass("convert_fp16")
    return cls().apply(model, cls.Params(**params), PassContext())


@pytest.mark.parametrize("constants", [False, True])
def test_weights_halve_io_stays_float32_and_numbers_hold(constants):
    model = toy_model(opset=11 if constants else 13, constants=constants)
    result = apply(model)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in out.graph.initializer] + [a.t for n in out.graph.node if n.op_type == "Constant"
                                                    for a in n.attribute]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    if not constants:
        assert stored_bytes(out) * 2 == stored_bytes(model)
    ref = run(model)
    err = np.abs(run(out) - ref).max()
    assert 0 < err < 2e-3 * np.abs(ref).max() * 10
    assert "9 nodes converted" in result.summary


def test_excluded_nodes_and_blocked_ops_stay_float32():
    model = toy_model()
    result = apply(model, exclude=["conv_0"], op_block_list=["MatMul"])
    out = result.model
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["W1"] == types["M"] == onnx.TensorProto.FLOAT  # weights of float32 nodes stay float32
    assert types["W3"] == onnx.TensorProto.FLOAT16
    reasons = {n.node: n.reason for n in result.notes}
    assert reasons["conv_0"] == "kept float32: excluded by 'conv_0'"
    assert reasons["matmul_8"] == "kept float32: MatMul has no float16 support"
    assert np.abs(run(out) - run(model)).max() < 2e-2


def test_quantized_models_keep_float32_scales():
    model = get_pass("quantize_weights")().apply(toy_model(), get_pass("quantize_weights").Params(
        min_elements=0, scale_dtype="float32", biases="float32"),
                                                 PassContext()).model
    out = apply(model).model
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: t for t in out.graph.initializer}
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 5 and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in dq)
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq)
    assert not any(n.op_type == "Cast" and n.input[0] in inits for n in out.graph.node)
    assert np.abs(run(out) - run(model)).max() < 2e-2


def test_already_float16_is_left_unchanged():
    once = apply(toy_model()).model
    again = apply(once)
    assert not again.modified and again.model is once and "already float16" in again.summary


def test_bad_parameter_rejected_with_location():
    doc = {"model": "m.onnx", "passes": [{"convert_fp16": {"max_finite_val": 70000}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.convert_fp16\.max_finite_val: must be in \(0, 65504\]"):
        parse_recipe(doc, Path("r.yaml"))


def test_input_read_by_unnamed_nodes_converts():
    """onnxconverter-common names its Casts after the nodes they feed: two unnamed readers of one
    input used to get two Casts with one output name, a graph that is not SSA."""
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8, 6, 6] x) => (float[N, 16, 6, 6] y) {
        a = Conv <pads = [1,1,1,1]> (x, W)
        b = Conv <pads = [1,1,1,1]> (x, W)
        y = Add(a, b)
    }""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W"))
    feeds = {"x": rng.standard_normal((2, 8, 6, 6)).astype(np.float32)}
    result = apply(model)
    assert result.modified, result.summary
    onnx.checker.check_model(result.model, full_check=True)
    assert all(not n.name for n in model.graph.node)  # the input model is left as it was
    ref, got = (make_session(m).run(None, feeds)[0] for m in (model, result.model))
    assert 0 < np.abs(got - ref).max() < 2e-3 * np.abs(ref).max()
