"""Weight passes on LSTM / GRU / RNN: W and R (gate rows as channels) quantized, B left float; onnxruntime
numbers before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.passes import PassContext, get_pass
from edgeopt.verify.runtime import make_session

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
HIDDEN, INPUT, SEQ = 16, 12, 7


def recurrent_model(op: str, directions: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    rows = GATES[op] * HIDDEN
    weights = {"W": rng.standard_normal((directions, rows, INPUT)) * 0.3,
               "R": rng.standard_normal((directions, rows, HIDDEN)) * 0.3,
               "B": rng.standard_normal((directions, 2 * rows)) * 0.1}
    attrs = {"hidden_size": HIDDEN, "direction": "bidirectional" if directions == 2 else "forward"}
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y", "y_h"], name=op.lower(), **attrs)
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, "batch", INPUT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SEQ, directions, "batch", HIDDEN]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [directions, "batch", HIDDEN])],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


FEED = {"x": np.random.default_rng(1).standard_normal((SEQ, 3, INPUT)).astype(np.float32)}


def cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("op,directions", [("LSTM", 1), ("GRU", 2), ("RNN", 1)])
def test_w_and_r_are_quantized_per_gate_row_and_b_stays_float(op, directions):
    model = recurrent_model(op, directions)
    cls = get_pass("quantize_weights")
    result = cls().apply(model, cls.Params(bits=8, granularity="per_channel"), PassContext())
    assert result.modified, result.summary
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    node = next(n for n in out.graph.node if n.op_type == op)
    producers = {o: n for n in out.graph.node for o in n.output}
    inits = {t.name: t for t in out.graph.initializer}
    rows = GATES[op] * HIDDEN
    for index, cols in ((1, INPUT), (2, HIDDEN)):  # W and R: int8 [directions, rows, cols], a scale per row
        deq = producers[node.input[index]]
        assert deq.op_type == "DequantizeLinear" and next(a.i for a in deq.attribute if a.name == "axis") == 1
        q, scale = inits[deq.input[0]], inits[deq.input[1]]
        assert q.data_type == TensorProto.INT8 and list(q.dims) == [directions, rows, cols]
        assert list(scale.dims) == [rows]  # one scale per gate row, shared by the directions
    assert node.input[3] in inits  # B, small, left as it was (float16 biases apply to Conv / Gemm only)
    before, after = (make_session(m).run(None, FEED) for m in (model, out))
    for a, b in zip(before, after):
        assert a.shape == b.shape and 0.9999 < cosine(a, b) < 1.0


def test_a_codebook_clusters_recurrent_weights_too():
    model = recurrent_model("LSTM")
    cls = get_pass("quantize_codebook")
    result = cls().apply(model, cls.Params(), PassContext())
    assert result.modified, result.summary
    assert result.summary.startswith("clustered 2 weights")
    before, after = (make_session(m).run(None, FEED)[0] for m in (model, result.model))
    assert 0.99 < cosine(before, after) < 1.0


def test_bits_auto_on_latency_shares_a_recurrent_nodes_cost_between_w_and_r():
    from edgeopt.devices import load_device
    from edgeopt.graph.edit import to_ir
    from edgeopt.passes.quantize_weights import _layer_costs
    from edgeopt.profile.profiler import profile_model
    from edgeopt.quant.weights import find_weights

    model = recurrent_model("LSTM")
    slots, _ = find_weights(to_ir(model).graph, ["LSTM"], [], 1)
    ctx = PassContext(device=load_device("myriadx"), input_shapes={"x": [SEQ, 1, INPUT]})
    costs = _layer_costs(model, {}, slots, "est_latency_ms", ctx)
    node_cost = next(layer["est_latency_ms"] for layer in profile_model(model, ctx.device, ctx.input_shapes).layers
                     if layer["name"] == "lstm")
    w, r = (costs[s.name]["float"] for s in slots)
    assert w + r == pytest.approx(node_cost) and w / r == pytest.approx(INPUT / HIDDEN)
