"""quantize_static on tiny graphs: QDQ structure, numbers, preparation of old exports, auto mode decisions."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.fidelity import compare
from test_quant_weights import run, toy_model

DATA = {"input": np.random.default_rng(7).standard_normal((128, 3, 8, 8)).astype(np.float32)}


def apply(model, data=DATA, **params):
    cls = get_pass("quantize_static")
    return cls().apply(model, cls.Params(**params), PassContext(data=data, input_shapes={"input": [1, 3, 8, 8]}))


def run_on(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def weight_types(model):
    """Element type of the stored tensor each Conv/Gemm/MatMul weight is decoded from."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    prod = producers(model)
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            w = node.input[1]
            dq = prod.get(w)
            out[node.name] = inits.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" \
                else inits.get(w)
    return out


def test_all_mode_qdq_structure_and_fidelity():
    model = toy_model()
    result = apply(model, mode="all")
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    prod = producers(q)
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            # activation and weight both come through DequantizeLinear: onnxruntime fuses QLinearConv / QLinearMatMul
            assert prod[node.input[0]].op_type == "DequantizeLinear"
            assert prod[node.input[1]].op_type == "DequantizeLinear"
    assert set(weight_types(q).values()) == {onnx.TensorProto.INT8}
    fid = compare([run(model)], [run(q)])
    assert fid["cosine"] > 0.999 and fid["max_abs_error"] < 0.05 * np.abs(run(model)).max()
    assert "7 nodes quantized" in result.summary and "128 samples of the recipe's data" in result.summary
    actions = {n.node: n.action for n in result.notes}
    assert actions["conv_0"] == "quantized" and actions["relu_1"] == "absorbed"


def test_old_export_with_constant_weights_is_prepared_first():
    """onnxruntime's quantizer alone keeps Constant weights in float (quantized at every run);
    after preparation every weight is stored as int8 and the opset allows per-channel axes."""
    from onnxruntime import quantization as oq

    from edgeopt.quant.calibrate import ArrayReader

    model = toy_model(opset=11, constants=True)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/m.onnx")
        oq.quantize_static(f"{tmp}/m.onnx", f"{tmp}/q.onnx", ArrayReader(DATA, 32), quant_format=oq.QuantFormat.QDQ,
                           per_channel=True)
        alone = onnx.load(f"{tmp}/q.onnx")
    alone_q = [n for n in alone.graph.node if n.op_type == "QuantizeLinear"
               and producers(alone).get(n.input[0]) is not None
               and producers(alone)[n.input[0]].op_type == "Constant"]
    assert len(alone_q) == 5  # float weights re-quantized at run time

    result = apply(model, mode="all")
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    assert q.opset_import[0].version >= 13
    assert set(weight_types(q).values()) == {onnx.TensorProto.INT8}
    assert not any(n.op_type == "Constant" for n in q.graph.node)
    assert "opset upgraded 11 -> 13" in result.summary and "Constant weights lifted" in result.summary
    assert compare([run(model)], [run(q)])["cosine"] > 0.999


def test_exclusions_by_name_glob_and_op_type():
    model = toy_model()
    result = apply(model, mode="all", exclude=["conv_0", "MatMul", "gemm_*"])
    types = weight_types(result.model)
    assert types["conv_0"] == types["matmul_8"] == types["gemm_7"] == onnx.TensorProto.FLOAT
    assert types["conv_2"] == types["conv_3"] == onnx.TensorProto.INT8
    reasons = {n.node: n.reason for n in result.notes}
    assert reasons["conv_0"] == "excluded by 'conv_0'" and reasons["matmul_8"] == "excluded by 'MatMul'"
    assert reasons["gemm_7"] == "excluded by 'gemm_*'"


def offset_model():
    """input [N,16] -> MatMul -> Relu -> MatMul -> Sub(1000) -> MatMul (columns summing to zero) -> [N,10].

    The offset cancels in float, but uint8 over [~994, ~1006] (a range that must include 0) has a step
    of ~4, as large as the signal: quantizing the last MatMul's input wrecks the output on every CPU
    (pure arithmetic; no int16 saturation, which only x86 without VNNI shows)."""
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((32, 10))
    weights = {"W1": rng.standard_normal((16, 32)) * 0.3, "W3": rng.standard_normal((32, 32)) * 0.3,
               "C": np.full(32, -1000.0), "W2": (w2 - w2.mean(axis=0)) * 0.3}
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 16] input) => (float[N, 10] out) {
        a = MatMul(input, W1)
        r = Relu(a)
        h = MatMul(r, W3)
        o = Sub(h, C)
        out = MatMul(o, W2)
    }""")
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type.lower()}_{i}"
    model.graph.initializer.extend(onnx.numpy_helper.from_array(a.astype(np.float32), k) for k, a in weights.items())
    return model


def test_auto_puts_the_costliest_node_back_in_float():
    model = offset_model()
    data = {"input": np.random.default_rng(7).standard_normal((128, 16)).astype(np.float32)}
    ctx = PassContext(data=data, input_shapes={"input": [1, 16]})
    cls = get_pass("quantize_static")
    ref = run_on(model, data)
    broken = cls().apply(model, cls.Params(mode="all"), ctx).model
    assert compare([ref], [run_on(broken, data)])["cosine"] < 0.5
    result = cls().apply(model, cls.Params(mode="auto", check_latency=False, min_cosine=0.999,
                                           min_top1_agreement=0.9), ctx)
    kept = {n.node: n.figures["local_rel_error"] for n in result.notes if "auto: kept in float" in n.reason}
    assert list(kept) == ["matmul_4"] and kept["matmul_4"] > 1  # its output error is larger than its output
    actions = {n.node: n.action for n in result.notes}
    assert actions["matmul_0"] == actions["matmul_2"] == "quantized"
    assert compare([ref], [run_on(result.model, data)])["cosine"] >= 0.999


def test_local_error_is_measured_after_the_absorbed_relu():
    """The QDQ model's raw MatMul output still holds the negatives its absorbed Relu removes: the error
    of a quantized node is measured on what its consumers read (the decoded tensor)."""
    from edgeopt.quant.sensitivity import local_errors

    model = offset_model()
    data = {"input": np.random.default_rng(7).standard_normal((64, 16)).astype(np.float32)}
    cls = get_pass("quantize_static")
    q = cls().apply(model, cls.Params(mode="all"), PassContext(data=data, input_shapes={"input": [1, 16]})).model
    errors = local_errors(model, q, data, ["matmul_0", "matmul_2"])
    assert 0 < errors["matmul_0"] < 0.05 and 0 < errors["matmul_2"] < 0.05


def test_auto_keeps_float_when_the_budget_cannot_be_met():
    result = apply(toy_model(), mode="auto", check_latency=False, min_cosine=1.0, max_float_nodes=1)
    assert not result.modified and "misses the fidelity budget" in result.summary


def test_auto_latency_decisions(monkeypatch):
    import edgeopt.passes.quantize_static as qs

    model = toy_model()
    # [[fp32 p10, fp32 median], [int8 p10, int8 median]]
    monkeypatch.setattr(qs, "latency_quantiles", lambda models, feeds: [[1.0, 1.1], [2.0, 2.1]])
    slower = apply(model, mode="auto")
    assert not slower.modified and slower.model is model
    assert "int8 is not faster on this host: fp32 1.000 ms vs int8 2.000 ms" in slower.summary
    assert "needs a 10% gain and a median no worse" in slower.summary
    monkeypatch.setattr(qs, "latency_quantiles", lambda models, feeds: [[2.0, 2.2], [1.0, 1.1]])
    faster = apply(model, mode="auto")
    assert faster.modified and "host latency 2.000 -> 1.000 ms" in faster.summary
    # a faster 10th percentile with a worse median (contention) is not faster
    monkeypatch.setattr(qs, "latency_quantiles", lambda models, feeds: [[2.0, 2.2], [1.0, 2.5]])
    assert not apply(model, mode="auto").modified
    # two series per decision: all ops slower; only Conv/Gemm/MatMul faster
    calls = iter([[[1.0, 1.0], [1.5, 1.5]]] * 2 + [[[1.0, 1.0], [0.5, 0.5]]] * 2)
    monkeypatch.setattr(qs, "latency_quantiles", lambda models, feeds: next(calls))
    heavy = apply(model, mode="auto")
    assert heavy.modified and any("only Conv/Gemm/MatMul" in n.reason for n in heavy.notes)
    # one lucky series out of two is not enough; the figures are the mean of the two
    calls = iter([[[2.0, 2.2], [1.0, 1.1]], [[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]],
                  [[2.0, 2.0], [2.0, 2.0]]])
    monkeypatch.setattr(qs, "latency_quantiles", lambda models, feeds: next(calls))
    lucky = apply(model, mode="auto")
    assert not lucky.modified and "fp32 2.000 ms vs int8 1.500 ms" in lucky.summary


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_keeps_stdout_clean(method, capsys):
    model = toy_model()
    result = apply(model, mode="all", calibration=method)
    assert capsys.readouterr().out == ""
    assert compare([run(model)], [run(result.model)])["cosine"] > 0.99


def test_without_data_calibrates_on_random_inputs():
    result = apply(toy_model(), data=None, mode="all")
    assert result.modified and "seeded random inputs (no data in the recipe)" in result.summary


def test_bad_parameter_rejected_with_location():
    doc = {"model": "m.onnx", "passes": [{"quantize_static": {"calibration": "percentile", "percentile": 40}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.quantize_static\.percentile: must be in \(50, 100\], got 40"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"quantize_static": {"calibration": "kl"}}]}
    with pytest.raises(UserError, match=r"quantize_static\.calibration: must be 'minmax' or 'percentile' or"):
        parse_recipe(doc, Path("r.yaml"))


def test_already_quantized_model_is_left_unchanged():
    weights = get_pass("quantize_weights")
    model = weights().apply(toy_model(), weights.Params(min_elements=0), PassContext()).model
    result = apply(model, mode="all")
    assert not result.modified and result.model is model and "already quantized" in result.summary
    again = apply(apply(toy_model(), mode="all").model, mode="all")
    assert not again.modified and "already quantized" in again.summary


def batch_one(model):
    """The toy model exported at a fixed batch of 1 (input and output dim 0 = 1)."""
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("data", [DATA, None], ids=["data", "random"])
def test_fixed_batch_one_model_is_calibrated_one_sample_at_a_time(data):
    """A model that only takes batch 1 (YOLOv8n with input_shapes) is calibrated in batches of 1,
    on the data's samples or on 32 random ones, and evaluated the same way."""
    model = batch_one(toy_model())
    result = apply(model, data=data, mode="auto", check_latency=False, min_top1_agreement=0.95)
    assert result.modified, result.summary
    samples = 128 if data is not None else 32
    assert f"7 nodes quantized, 0 kept in float; calibrated (minmax) on {samples} samples" in result.summary
    q = result.model
    assert set(weight_types(q).values()) == {onnx.TensorProto.INT8}
    one = {"input": DATA["input"][:1]}
    import onnxruntime as ort
    ref, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, one)[0]
                for m in (model, q))
    assert got.shape == (1, 10)
    assert compare([ref], [got])["cosine"] > 0.995
