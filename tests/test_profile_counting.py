"""Hand-computed MACs, ops, params and bytes for every counted op, on tiny graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.profile import profile_model

RNG = np.random.default_rng(0)


def f32(name, shape, zeros_fraction=0.0):
    values = RNG.standard_normal(shape).astype(np.float32)
    if zeros_fraction:
        flat = values.reshape(-1)
        flat[: int(flat.size * zeros_fraction)] = 0.0
    return numpy_helper.from_array(values, name)


def make(nodes, inputs, outputs, inits=(), opset=21):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def layer(prof, name):
    return next(l for l in prof.layers if l["name"] == name)


def test_conv_groups_dilation_strides_bias():
    # x 1x4x10x10, W 6x2x3x3, group 2, dilation 2, stride 2, pad 1 -> out 1x6x4x4
    # (10 + 2 - (2*2 + 1)) // 2 + 1 = 4;  MACs = 96 outputs x 2 in-ch x 9 = 1728
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", group=2, dilations=[2, 2],
                            strides=[2, 2], pads=[1, 1, 1, 1])
    prof = profile_model(make([node], [("x", [1, 4, 10, 10])], ["y"], [f32("w", [6, 2, 3, 3]), f32("b", [6])]))
    c = layer(prof, "c")
    assert c["macs"] == 1728
    assert c["ops"] == 2 * 1728 + 96  # + one add per output for the bias
    assert c["params_count"] == 6 * 2 * 9 + 6
    assert c["weight_bytes"] == (108 + 6) * 4
    assert c["output_bytes"] == 96 * 4
    assert c["op_class"] == "conv"
    assert prof.totals["macs"] == 1728


def test_depthwise_conv_is_its_own_class():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])
    prof = profile_model(make([node], [("x", [1, 8, 8, 8])], ["y"], [f32("w", [8, 1, 3, 3])]))
    dw = layer(prof, "dw")
    assert dw["macs"] == 8 * 8 * 8 * 9
    assert dw["op_class"] == "depthwise"


def test_conv_transpose():
    # x 1x4x5x5, W 4x3x3x3 (Cin x Cout/group x k x k), stride 2 -> out 1x3x11x11
    # MACs = N*Cin*H*W (100) x Cout/group (3) x 9 = 2700
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", strides=[2, 2])
    prof = profile_model(make([node], [("x", [1, 4, 5, 5])], ["y"], [f32("w", [4, 3, 3, 3])]))
    ct = layer(prof, "ct")
    assert ct["macs"] == 2700
    assert ct["output_bytes"] == 3 * 11 * 11 * 4


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm(trans_a):
    a_shape = [16, 2] if trans_a else [2, 16]
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="g", transA=trans_a)
    prof = profile_model(make([node], [("a", a_shape)], ["y"], [f32("w", [16, 8]), f32("c", [8])]))
    g = layer(prof, "g")
    assert g["macs"] == 2 * 8 * 16
    assert g["ops"] == 2 * 256 + 16
    assert g["params_count"] == 16 * 8 + 8
    assert g["op_class"] == "gemm"


@pytest.mark.parametrize("a_shape,b_shape,macs", [
    ([3, 4, 5], [3, 5, 6], 3 * 4 * 6 * 5),       # batched
    ([2, 1, 4, 5], [3, 5, 6], 2 * 3 * 4 * 6 * 5),  # broadcast batch
    ([4, 5], [5, 6], 4 * 6 * 5),
])
def test_matmul(a_shape, b_shape, macs):
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    prof = profile_model(make([node], [("a", a_shape), ("b", b_shape)], ["y"]))
    assert layer(prof, "mm")["macs"] == macs
    assert layer(prof, "mm")["params_count"] == 0  # both operands are activations


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_layers(op, gates):
    # seq 5, batch 1, input 8, hidden 4: MACs = 5 x 1 x (gates x 4) x (8 + 4)
    node = helper.make_node(op, ["x", "w", "r"], ["y"], name="rnn", hidden_size=4)
    prof = profile_model(make([node], [("x", [5, 1, 8])], ["y"],
                              [f32("w", [1, gates * 4, 8]), f32("r", [1, gates * 4, 4])]))
    rnn = layer(prof, "rnn")
    assert rnn["macs"] == 5 * gates * 4 * 12
    assert rnn["params_count"] == gates * 4 * 12
    assert rnn["op_class"] == "gemm"


def test_pooling_and_normalization_ops():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="max", kernel_shape=[2, 2], strides=[2, 2]),  # 1x4x4x4
        helper.make_node("AveragePool", ["p"], ["a"], name="avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("GlobalAveragePool", ["n"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Softmax", ["f"], ["y"], name="sm"),
    ]
    inits = [f32("s", [4]), f32("b", [4]), f32("m", [4]), numpy_helper.from_array(np.ones(4, np.float32), "v")]
    prof = profile_model(make(nodes, [("x", [1, 4, 8, 8])], ["y"], inits))
    assert layer(prof, "max")["ops"] == 64 * 4  # 64 outputs x 2x2 window
    assert layer(prof, "avg")["ops"] == 64 * 9
    bn = layer(prof, "bn")
    assert bn["ops"] == 2 * 64
    assert bn["params_count"] == 8  # scale + bias; running mean / var are buffers
    assert bn["weight_bytes"] == 16 * 4  # but all four are stored
    assert layer(prof, "gap")["ops"] == 64
    assert layer(prof, "flat")["ops"] == 0 and layer(prof, "flat")["op_class"] == "view"
    assert layer(prof, "sm")["ops"] == 4 * 5
    assert prof.totals["macs"] == 0
    assert prof.totals["coverage"] == 1.0


def test_elementwise_with_broadcast():
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    prof = profile_model(make(nodes, [("x", [1, 4, 3, 3])], ["y"], [f32("c", [4, 1, 1])]))
    assert layer(prof, "add")["ops"] == 36
    assert layer(prof, "relu")["ops"] == 36
    assert layer(prof, "sig")["ops"] == 36 * 4


def test_unknown_operator_is_reported_not_zero():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mystery", ["r"], ["y"], name="odd", domain="custom.ops")]
    model = make(nodes, [("x", [1, 4])], ["y"])
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    prof = profile_model(model)
    odd = layer(prof, "odd")
    # not counted exactly, but costed: its output size is unknown, so one op per input element
    assert odd["counted"] is False and odd["estimated"] is True
    assert odd["macs"] == 0 and odd["ops"] == 4 and "element-wise on its inputs" in odd["note"]
    assert prof.totals["estimated_ops"] == {"Mystery": 1}
    assert prof.totals["coverage"] == 0.5
    assert prof.totals["coverage_text"] == "50 % of nodes"
    assert prof.totals["uncounted_ops"] == {"Mystery": 1}


def _conv_from(weight_nodes, weight_inits, w_out="w"):
    conv = helper.make_node("Conv", ["x", w_out], ["y"], name="conv", pads=[1, 1, 1, 1])
    return make(weight_nodes + [conv], [("x", [1, 4, 6, 6])], ["y"], weight_inits)


def test_int8_weights_through_dequantize_are_storage_not_compute():
    w = numpy_helper.from_array(RNG.integers(-127, 127, (8, 4, 3, 3)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws")
    zp = numpy_helper.from_array(np.zeros(8, np.int8), "wz")
    dq = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq", axis=0)
    prof = profile_model(_conv_from([dq], [w, scale, zp]))
    assert [l["name"] for l in prof.layers] == ["conv"]  # the decode is not a layer
    conv = layer(prof, "conv")
    assert conv["macs"] == 8 * 36 * 36
    assert conv["params_count"] == 288
    assert conv["weight_bytes"] == 288 + 32 + 8
    assert conv["weight_precision"] == "int8"
    assert prof.totals["weight_bytes_by_dtype"] == {"float": 32, "int8": 296}


def test_packed_int4_weights_count_half_a_byte():
    values = RNG.integers(-8, 7, 288)
    wq = helper.make_tensor("wq", TensorProto.INT4, [8, 4, 3, 3], values.tolist())
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "ws")
    dq = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq")
    prof = profile_model(_conv_from([dq], [wq, scale]))
    conv = layer(prof, "conv")
    assert conv["weight_bytes"] == 144 + 4  # ceil(288 / 2) + the scale
    assert conv["weight_precision"] == "int4"
    assert conv["params_count"] == 288


def test_fp16_weights_through_cast():
    w16 = numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float16), "w16")
    cast = helper.make_node("Cast", ["w16"], ["w"], name="cast", to=TensorProto.FLOAT)
    prof = profile_model(_conv_from([cast], [w16]))
    conv = layer(prof, "conv")
    assert conv["weight_bytes"] == 576
    assert conv["weight_precision"] == "fp16"
    assert prof.totals["weight_bytes_by_dtype"] == {"float16": 576}


def test_codebook_indices_plus_table():
    table = numpy_helper.from_array(np.linspace(-1, 1, 16).astype(np.float32), "table")
    idx = numpy_helper.from_array(RNG.integers(0, 16, (8, 4, 3, 3)).astype(np.uint8), "idx")
    gather = helper.make_node("Gather", ["table", "idx"], ["w"], name="decode", axis=0)
    prof = profile_model(_conv_from([gather], [table, idx]))
    conv = layer(prof, "conv")
    assert conv["weight_bytes"] == 288 + 64
    assert conv["weight_precision"] == "int8"
    assert conv["params_count"] == 288
    assert conv["macs"] == 8 * 36 * 36


def test_sparse_weights_report_both_sizes():
    w = f32("w", [8, 4, 3, 3], zeros_fraction=0.75)  # 72 non-zeros of 288
    prof = profile_model(_conv_from([], [w]))
    t = prof.totals
    assert t["weight_bytes_dense"] == 1152
    assert t["weight_bytes_sparse"] == 72 * 4 + 36  # values + a 288-bit mask
    assert t["weight_bytes"] == 1152  # no device that keeps weights sparse
    assert t["sparse_weight_tensors"] == 1


def test_profile_does_not_modify_the_model():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    model = make([node], [("x", ["N", 4, 5, 5])], ["y"], [f32("w", [2, 4, 3, 3])])
    before = model.SerializeToString()
    prof = profile_model(model, None, {"x": [2, 4, 5, 5]})
    assert model.SerializeToString() == before
    assert layer(prof, "c")["macs"] == 2 * 2 * 9 * 36


def test_unknown_non_batch_dim_is_a_clear_error():
    from edgeopt.errors import UserError

    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    model = make([node], [("x", [1, "C", 5])], ["y"])
    with pytest.raises(UserError, match="input 'x': dim 1 is dynamic"):
        profile_model(model)


def test_shared_mac_rule_by_hand():
    from edgeopt.graph.macs import layer_macs

    assert layer_macs("Conv", [1, 4, 8, 8], [8, 4, 3, 3], [1, 8, 8, 8]) == 512 * 36
    assert layer_macs("Conv", [1, 8, 8, 8], [8, 1, 3, 3], [1, 8, 4, 4]) == 128 * 9  # depthwise, stride 2
    assert layer_macs("ConvTranspose", [1, 4, 4, 4], [4, 2, 3, 3], [1, 2, 9, 9]) == 64 * 18
    assert layer_macs("Gemm", [3, 256], None, [3, 64]) == 3 * 64 * 256
    assert layer_macs("Gemm", [256, 3], None, [3, 64], trans_a=True) == 3 * 64 * 256
    assert layer_macs("MatMul", [2, 5, 16], None, [2, 5, 7]) == 70 * 16
