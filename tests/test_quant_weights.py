"""quantize_weights on tiny graphs: structure, bytes, onnxruntime numbers, opset handling, parameter errors."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe


def toy_model(opset: int = 13, seed: int = 0, constants: bool = False) -> onnx.ModelProto:
    """input [N,3,8,8] -> Conv 3x3 (+b) -> Relu -> depthwise Conv -> 1x1 Conv -> Relu -> GAP -> Flatten
    -> Gemm (transB=0) -> MatMul -> logits [N,10]; seeded weights, nodes named, optionally as Constants."""
    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.standard_normal((16, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(16) * 0.1,
        "W2": rng.standard_normal((16, 1, 3, 3)) * 0.3, "W3": rng.standard_normal((32, 16, 1, 1)) * 0.3,
        "G": rng.standard_normal((32, 24)) * 0.3, "gb": rng.standard_normal(24) * 0.1,
        "M": rng.standard_normal((24, 10)) * 0.3,
    }
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, 3, 8, 8] input) => (float[N, 10] logits) {{
        c1 = Conv <pads = [1,1,1,1]> (input, W1, b1)
        r1 = Relu(c1)
        c2 = Conv <pads = [1,1,1,1], group = 16> (r1, W2)
        c3 = Conv (c2, W3)
        r3 = Relu(c3)
        p = GlobalAveragePool(r3)
        f = Flatten(p)
        h = Gemm(f, G, gb)
        logits = MatMul(h, M)
    }}"""
    model = onnx.parser.parse_model(text)
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type.lower()}_{i}"
    for name, arr in weights.items():
        tensor = numpy_helper.from_array(arr.astype(np.float32), name)
        if constants:
            model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=tensor, name=f"const_{name}"))
        else:
            model.graph.initializer.append(tensor)
    onnx.checker.check_model(model, full_check=True)
    return model


FEED = {"input": np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)}


def run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, FEED)[0]


def apply(model, **params):
    cls = get_pass("quantize_weights")
    return cls().apply(model, cls.Params(**params), PassContext())


def stored_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def test_int8_per_channel_structure_bytes_and_numbers():
    model = toy_model()
    ref = run(model)
    result = apply(model, bits=8, min_elements=0)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("DequantizeLinear") == 5 and ops.count("Conv") == 3 and ops.count("Gemm") == 1
    types = {t.name: t.data_type for t in out.graph.initializer}
    for w in ("W1", "W2", "W3", "G", "M"):
        assert types[f"{w}_quantized"] == onnx.TensorProto.INT8
        assert w not in types  # the float weight is gone
    # biases are stored float16, scales float32 by default (per-channel int8 needs no upgrade past 13)
    assert types["b1_fp16"] == types["gb_fp16"] == onnx.TensorProto.FLOAT16
    assert types["G_scale"] == onnx.TensorProto.FLOAT
    assert "b1" not in types and out.opset_import[0].version == 13
    half = apply(model, bits=8, min_elements=0, scale_dtype="auto").model  # float16 scales: asked for
    assert initializer(half, "G_scale").data_type == onnx.TensorProto.FLOAT16 and half.opset_import[0].version == 19
    # per-channel axes: Conv out channels (0), Gemm transB=0 / MatMul [K, N] columns (1)
    axes = {n.input[0]: helper.get_attribute_value(n.attribute[0]) for n in out.graph.node
            if n.op_type == "DequantizeLinear"}
    assert axes == {"W1_quantized": 0, "W2_quantized": 0, "W3_quantized": 0, "G_quantized": 1, "M_quantized": 1}
    assert numpy_helper.to_array(initializer(out, "G_scale")).shape == (24,)
    err = np.abs(run(out) - ref).max()
    assert 0 < err < 0.02 * np.abs(ref).max()
    q_weights = sum(f["bytes_after"] for f in {n.figures["elements"]: n.figures for n in result.notes
                                                if n.action == "quantized"}.values())
    assert stored_bytes(model) / stored_bytes(out) > 3.0
    assert result.modified and "5 weights" in result.summary and "int8 per_channel" in result.summary
    assert q_weights > 0


def test_decoded_weights_match_numpy_math():
    """onnxruntime's DequantizeLinear reproduces edgeopt.quant.dequantize exactly."""
    from edgeopt.quant import compute_qparams, dequantize, quantize
    model = toy_model()
    w1 = numpy_helper.to_array(initializer(model, "W1"))
    for scale_dtype, np_dtype in (("float32", np.float32), ("float16", np.float16)):
        out = apply(model, bits=4, granularity="block", block_size=16, symmetric=False, clip="minmax",
                    min_elements=0, scale_dtype=scale_dtype).model
        probe = onnx.ModelProto()
        probe.CopyFrom(out)
        reshape = next(n for n in out.graph.node if n.op_type == "Reshape" and n.output[0] in
                       {i for m in out.graph.node if m.op_type == "Conv" and m.name == "conv_0" for i in m.input})
        probe.graph.output.add().name = reshape.output[0]
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        decoded = session.run(None, FEED)[1]
        qp = compute_qparams(w1.reshape(16, 27), 4, False, axis=1, block_size=16, scale_dtype=np_dtype)
        expected = dequantize(quantize(w1.reshape(16, 27), qp), qp)
        if np_dtype is np.float16:  # DequantizeLinear's output is float16 too: one more rounding
            expected = expected.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(decoded, expected.reshape(w1.shape))
        assert initializer(out, "W1_quantized").data_type == onnx.TensorProto.UINT4
        assert list(initializer(out, "W1_scale").dims) == [16, 2]  # 27 values per row -> 2 blocks of 16


@pytest.mark.parametrize("params,max_rel_err,min_ratio", [
    (dict(bits=8, granularity="per_tensor"), 0.03, 3.8),
    (dict(bits=8, symmetric=False), 0.03, 3.0),
    (dict(bits=4), 0.3, 5.0),
    (dict(bits=4, granularity="block", block_size=16, scale_dtype="float16"), 0.3, 5.0),
    (dict(bits=4, clip="mse", symmetric=False), 0.3, 4.5),
])
def test_modes_error_and_size(params, max_rel_err, min_ratio):
    model = toy_model()
    ref = run(model)
    out = apply(model, min_elements=0, **params).model
    onnx.checker.check_model(out, full_check=True)
    rel = np.abs(run(out) - ref).max() / np.abs(ref).max()
    assert 0 < rel < max_rel_err
    biases = 4 * (16 + 24)
    assert (stored_bytes(model) - biases) / (stored_bytes(out) - biases) > min_ratio


def test_int4_upgrades_opset_and_int8_per_channel_needs_13():
    old = toy_model(opset=11)
    r8 = apply(old, bits=8, min_elements=0, scale_dtype="float32")
    assert r8.model.opset_import[0].version == 13 and "opset upgraded 11 -> 13" in r8.summary
    r8_half = apply(old, bits=8, min_elements=0, scale_dtype="auto")  # float16 scales need opset 19
    assert r8_half.model.opset_import[0].version == 19 and "opset upgraded 11 -> 19" in r8_half.summary
    r4 = apply(old, bits=4, min_elements=0)
    assert r4.model.opset_import[0].version == 21 and r4.model.ir_version >= 10
    assert initializer(r4.model, "W1_quantized").data_type == onnx.TensorProto.INT4
    per_tensor = apply(old, bits=8, granularity="per_tensor", min_elements=0)
    assert per_tensor.model.opset_import[0].version == 11  # per-tensor int8 needs no upgrade
    assert np.abs(run(r4.model) - run(old)).max() < 0.3 * np.abs(run(old)).max()


def test_weights_in_constant_nodes_are_quantized():
    model = toy_model(constants=True)
    result = apply(model, bits=8, min_elements=0)
    assert not any(n.op_type == "Constant" for n in result.model.graph.node if n.output[0] in "W1 W2 W3 G M".split())
    assert sum(n.action == "quantized" for n in result.notes) == 5
    assert np.abs(run(result.model) - run(model)).max() < 0.02 * np.abs(run(model)).max()


def test_small_tensors_and_exclusions_stay_float_with_reasons():
    model = toy_model()
    result = apply(model, bits=8, min_elements=200, exclude=["matmul_*", "conv_3"])
    notes = {}
    for note in result.notes:  # the weight's note (each layer's bias note follows it)
        notes.setdefault(note.node, note)
    assert notes["conv_2"].action == "skipped" and "144 elements < min_elements 200" in notes["conv_2"].reason
    assert notes["matmul_8"].action == "skipped" and "matmul_*" in notes["matmul_8"].reason
    assert notes["conv_3"].action == "skipped" and "excluded" in notes["conv_3"].reason
    assert notes["conv_0"].action == "quantized" and notes["gemm_7"].action == "quantized"
    kinds = {t.name: t.data_type for t in result.model.graph.initializer}
    assert kinds["W2"] == kinds["M"] == kinds["W3"] == onnx.TensorProto.FLOAT


def test_shared_weight_read_by_an_unquantized_op_is_skipped():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 16] x) => (float[2, 16] y) {
        m = MatMul(x, W)
        y = Add(m, W_row)
    }""")
    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(w, "W"), numpy_helper.from_array(w[0], "W_row")])
    model.graph.node[1].input[1] = "W"  # Add reads W too (broadcast [2,16] + [16,16] is invalid) -> make valid
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 16
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 16
    result = apply(model, bits=8, min_elements=0)
    assert not result.modified and result.model is model
    assert "also read by" in result.notes[0].reason


def test_model_that_cannot_be_upgraded_is_left_unchanged_with_reason(monkeypatch):
    import onnx.version_converter as vc

    def refuse(model, target):
        raise RuntimeError("No Adapter For Upsample")

    monkeypatch.setattr(vc, "convert_version", refuse)
    model = toy_model(opset=11)
    result = apply(model, bits=4, min_elements=0)
    assert not result.modified and result.model is model
    assert "left unchanged" in result.summary and "opset 11" in result.summary
    assert "needs opset 21" in result.summary and "No Adapter For Upsample" in result.summary
    assert result.notes[0].action == "skipped"


def test_result_onnxruntime_cannot_load_leaves_model_unchanged(monkeypatch):
    import edgeopt.quant.driver as driver  # the shared loop every weight pass ends with

    monkeypatch.setattr(driver, "ort_load_error", lambda model: "Could not find an implementation for X")
    model = toy_model()
    result = apply(model, bits=8, min_elements=0)
    assert not result.modified and result.model is model
    assert "onnxruntime cannot load" in result.summary and "Could not find an implementation" in result.summary


def test_bad_parameter_is_rejected_with_its_location():
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"bits": 8, "block_size": 1}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.quantize_weights\.block_size: must be >= 2, got 1"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"bits": 3}}]}
    with pytest.raises(UserError, match=r"quantize_weights\.bits: must be 8 or 4 or .auto., got 3"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"op_types": ["Conv", "Relu"]}}]}
    with pytest.raises(UserError, match=r"op_types: 'Relu' is not supported"):
        parse_recipe(doc, Path("r.yaml"))


@pytest.mark.parametrize("params", [dict(bits=8), dict(bits=8, scale_dtype="float32"),
                                    dict(bits=8, symmetric=False, granularity="per_tensor"),
                                    dict(bits=4, granularity="block", block_size=16, scale_dtype="float32"),
                                    dict(bits=4, granularity="block", block_size=16, symmetric=False,
                                         scale_dtype="float16")])
def test_cast_mul_decode_equals_dequantize_linear(params):
    """decode: cast_mul stores the same integers; its weights equal DequantizeLinear's bit for bit,
    and onnxruntime folds the decode at load (no decode node left in its optimized graph)."""
    model = toy_model(opset=13)
    names = {"conv_0": "W1", "conv_2": "W2", "conv_3": "W3", "gemm_7": "G", "matmul_8": "M"}
    decoded = {}
    for decode in ("dequantize_linear", "cast_mul"):
        out = apply(model, min_elements=0, decode=decode, **params).model
        onnx.checker.check_model(out, full_check=True)
        probe = onnx.ModelProto()
        probe.CopyFrom(out)
        readers = {n.name: n.input[1] for n in out.graph.node if n.name in names}
        for value in readers.values():
            probe.graph.output.add().name = value
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        decoded[decode] = dict(zip(readers, session.run(None, FEED)[1:]))
        if decode == "cast_mul":
            assert "DequantizeLinear" not in {n.op_type for n in out.graph.node}
            kinds = {t.data_type for t in out.graph.initializer if t.name.endswith("_quantized")}
            assert kinds <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                             onnx.TensorProto.UINT4} and len(kinds) == 1
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                options.optimized_model_filepath = f"{tmp}/opt.onnx"
                ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
                folded = onnx.load(f"{tmp}/opt.onnx")
            assert {n.op_type for n in folded.graph.node} <= {"Conv", "Relu", "GlobalAveragePool", "Flatten",
                                                              "Gemm", "MatMul"}
    for node in names:
        half = initializer(out, "W1_scale").data_type == onnx.TensorProto.FLOAT16
        if half:  # DequantizeLinear then computes in float16, Mul in float32
            np.testing.assert_allclose(decoded["cast_mul"][node], decoded["dequantize_linear"][node], rtol=1e-3)
        else:
            np.testing.assert_array_equal(decoded["cast_mul"][node], decoded["dequantize_linear"][node])


def test_quantize_biases_and_auto_clip():
    model = toy_model()
    ref = run(model)
    result = apply(model, bits=8, min_elements=0, biases="int8")
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    assert types["b1_quantized"] == types["gb_quantized"] == onnx.TensorProto.INT8
    assert "b1" not in types and "2 biases to int8 (160 B -> 48 B)" in result.summary  # 40 B + 2 scales
    assert np.abs(run(result.model) - ref).max() < 0.02 * np.abs(ref).max()
    kept = apply(model, bits=8, min_elements=0, biases="float32")
    types = {t.name: t.data_type for t in kept.model.graph.initializer}
    assert types["b1"] == types["gb"] == onnx.TensorProto.FLOAT and "2 biases (160 B) stay float32" in kept.summary

    def weight_errors(result):
        return {n.reason: n.figures["rel_rmse"] for n in result.notes if "rel_rmse" in n.figures}
    # auto clip: mse for 4 bits (smaller weight error than minmax), minmax for 8
    auto4 = weight_errors(apply(model, bits=4, min_elements=0))
    mm4 = weight_errors(apply(model, bits=4, clip="minmax", min_elements=0))
    assert len(auto4) == 5 and all(auto4[k] <= mm4[k] for k in auto4) and sum(auto4.values()) < sum(mm4.values())
    assert weight_errors(apply(model, bits=8, min_elements=0)) == weight_errors(
        apply(model, bits=8, clip="minmax", min_elements=0))


def test_float16_storage_falls_back_where_float16_cannot_hold_the_values():
    model = toy_model()
    w1 = initializer(model, "W1")
    tiny = numpy_helper.to_array(w1).copy()
    tiny[3] *= 1e-5  # channel 3's int8 scale (~1e-7) is below float16's normal range
    w1.CopyFrom(numpy_helper.from_array(tiny, "W1"))
    b1 = initializer(model, "b1")
    b1.CopyFrom(numpy_helper.from_array(np.full(16, 1e5, np.float32), "b1"))  # beyond float16's 65504
    result = apply(model, bits=8, min_elements=0, scale_dtype="auto")
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    assert types["W1_scale"] == types["b1"] == onnx.TensorProto.FLOAT
    assert types["W2_scale"] == types["gb_fp16"] == onnx.TensorProto.FLOAT16
    reasons = [n.reason for n in result.notes if n.node == "conv_0"]
    assert "W W1 -> int8 per_channel, float32 scales (float16 cannot hold them)" in reasons
    assert "bias b1 stays float32: |b| exceeds float16's range" in reasons
    assert "1 biases to float16" in result.summary and "1 biases (64 B) stay float32" in result.summary
    ref, got = run(model), run(result.model)
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


def test_gather_table_is_quantized_per_row():
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (int64[N, 5] ids) => (float[N, 5, 64] emb) {
        emb = Gather <axis = 0> (T, ids)
    }""")
    table = rng.standard_normal((100, 64)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(table, "T"))
    ids = rng.integers(0, 100, size=(3, 5)).astype(np.int64)
    result = apply(model, bits=4, clip="minmax", min_elements=0)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert initializer(out, "T_quantized").data_type == onnx.TensorProto.INT4
    assert list(initializer(out, "T_scale").dims) == [100]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    step = np.abs(table).max(axis=1) / 7
    assert np.all(np.abs(got - table[ids]) <= step[ids][..., None] * 0.5 + 1e-6)


def test_auto_scales_fall_back_to_float32_when_opset_19_is_out_of_reach(monkeypatch):
    import edgeopt.quant.opset as opset
    real = opset.ensure_opset

    def no_19(model, target):
        if target >= 19:
            raise opset.OpsetUpgradeError("the model is opset 13 and this format needs opset 19, but onnx's "
                                           "version converter cannot upgrade it (no adapter)")
        return real(model, target)

    monkeypatch.setattr(opset, "ensure_opset", no_19)
    model = toy_model(opset=13)
    result = apply(model, bits=8, min_elements=0, scale_dtype="auto")
    assert result.modified and result.model.opset_import[0].version == 13
    assert initializer(result.model, "W1_scale").data_type == onnx.TensorProto.FLOAT
    assert "kept float32 scales: opset 19 not reachable (no adapter)" in result.summary
    assert np.abs(run(result.model) - run(model)).max() < 0.02 * np.abs(run(model)).max()
    forced = apply(model, bits=8, min_elements=0, scale_dtype="float16")  # asked for: unchanged, with why
    assert not forced.modified and "needs opset 19" in forced.summary


def test_weights_inside_subgraphs_are_named_as_skipped():
    rng = np.random.default_rng(2)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8, 6, 6] x, bool c) => (float[N, 16, 6, 6] y) {
        y = If (c) <then_branch = t () => (float[N, 16, 6, 6] o) { o = Conv <pads = [1,1,1,1]> (x, W) },
                    else_branch = e () => (float[N, 16, 6, 6] o2) { o2 = Conv <pads = [1,1,1,1]> (x, W2) }>
    }""")
    for name in ("W", "W2"):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
                                                               name))
    for params in (dict(bits=8), dict(bits=4)):
        result = apply(model, **params)
        assert not result.modified and result.model is model
        assert "2 weight nodes inside If/Loop/Scan subgraphs are not handled" in result.summary
        skipped = [n for n in result.notes if n.action == "skipped"]
        assert len(skipped) == 2 and all("inside a subgraph of If" in n.reason for n in skipped)
