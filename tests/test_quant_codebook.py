"""quantize_codebook on tiny graphs: decode structure, exact decode, packed indices, errors vs uniform."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.quant import kmeans_1d
from edgeopt.recipe.load import parse_recipe
from test_quant_weights import FEED, initializer, run, stored_bytes, toy_model


def apply(model, name="quantize_codebook", **params):
    cls = get_pass(name)
    return cls().apply(model, cls.Params(**params), PassContext())


def test_per_tensor_4bit_structure_and_numbers():
    model = toy_model()
    ref = run(model)
    result = apply(model, bits=4, granularity="per_tensor", min_elements=0, scale_dtype="auto")
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    # 5 index Casts, 5 float16 codebook Casts, 2 float16 bias Casts (Conv b1, Gemm gb)
    assert ops.count("Gather") == 5 and ops.count("Cast") == 12 and "DequantizeLinear" not in ops
    assert initializer(out, "W1_indices").data_type == onnx.TensorProto.UINT4
    assert initializer(out, "W1_codebook").data_type == onnx.TensorProto.FLOAT16
    assert initializer(out, "b1_fp16").data_type == onnx.TensorProto.FLOAT16
    assert list(initializer(out, "W1_codebook").dims) == [16]
    assert len(initializer(out, "W1_indices").raw_data) == (16 * 27 + 1) // 2  # two indices per byte
    assert out.opset_import[0].version == 21
    rel = np.abs(run(out) - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.3
    biases = 4 * (16 + 24)
    assert (stored_bytes(model) - biases) / (stored_bytes(out) - biases // 2) > 5.0
    assert "clustered 5 weights into 16 centroids per_tensor" in result.summary
    assert "2 biases to float16 (160 B -> 80 B)" in result.summary


def test_codebooks_are_float32_by_default():
    out = apply(toy_model(), bits=4, granularity="per_tensor", min_elements=0).model
    assert initializer(out, "W1_codebook").data_type == onnx.TensorProto.FLOAT


def test_decode_in_onnxruntime_equals_numpy_kmeans():
    model = toy_model()
    out = apply(model, bits=3, granularity="per_tensor", min_elements=0, scale_dtype="float32").model
    w3 = numpy_helper.to_array(initializer(model, "W3"))
    centroids, idx = kmeans_1d(w3, 8)
    gather = next(n for n in out.graph.node if n.op_type == "Gather" and n.input[0].startswith("W3"))
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    probe.graph.output.add().name = gather.output[0]
    decoded = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, FEED)[1]
    np.testing.assert_array_equal(decoded, centroids[idx])
    assert len(np.unique(decoded)) <= 8


def test_per_channel_uses_gather_elements_on_the_channel_axis():
    model = toy_model()
    ref = run(model)
    out = apply(model, bits=4, granularity="per_channel", min_elements=0, scale_dtype="auto").model
    onnx.checker.check_model(out, full_check=True)
    books = {t.name: list(t.dims) for t in out.graph.initializer if t.name.endswith("_codebook")}
    assert books["W1_codebook"] == [16, 16]  # [out channels, 2^bits]
    assert books["M_codebook"] == [16, 10]  # MatMul [K, N]: one codebook column per output column
    decoded = {}
    for w in ("W1", "M"):
        node = next(n for n in out.graph.node  # the float16 codebook is Cast to float32 first
                    if n.op_type == "GatherElements" and n.input[0] == f"{w}_codebook_Cast_out")
        decoded[w] = node
    assert decoded["M"].attribute[0].i == 0 and decoded["W1"].attribute[0].i == 1
    per_tensor = apply(model, bits=4, granularity="per_tensor", min_elements=0).model
    # per-channel codebooks follow each channel: closer to float than one codebook per tensor
    assert np.abs(run(out) - ref).max() < np.abs(run(per_tensor) - ref).max()


def test_eight_bit_indices_are_uint8_without_opset_21():
    model = toy_model(opset=13)
    out = apply(model, bits=6, granularity="per_tensor", min_elements=0).model
    assert out.opset_import[0].version == 13
    assert initializer(out, "W1_indices").data_type == onnx.TensorProto.UINT8
    assert np.abs(run(out) - run(model)).max() < 0.05 * np.abs(run(model)).max()


def test_codebook_beats_uniform_at_the_same_bits_per_tensor():
    model = toy_model(seed=3)
    cb = apply(model, bits=4, granularity="per_tensor", min_elements=0)
    uni = apply(model, "quantize_weights", bits=4, granularity="per_tensor", symmetric=False, clip="minmax",
                min_elements=0)
    clipped = apply(model, "quantize_weights", bits=4, granularity="per_tensor", symmetric=False, clip="mse",
                    min_elements=0)
    cb_err = {n.reason.split()[1]: n.figures["rel_rmse"] for n in cb.notes if n.action == "clustered"}
    uni_err = {n.reason.split()[1]: n.figures["rel_rmse"] for n in uni.notes if n.action == "quantized"}
    mse_err = {n.reason.split()[1]: n.figures["rel_rmse"] for n in clipped.notes if n.action == "quantized"}
    assert set(cb_err) == set(uni_err) == {"W1", "W2", "W3", "G", "M"}
    for name in cb_err:  # k-means puts the 16 levels where the weights are
        assert cb_err[name] < 0.9 * uni_err[name], name
        assert cb_err[name] < mse_err[name], name


def test_skips_and_unchanged():
    model = toy_model()
    result = apply(model, bits=4, min_elements=10_000)
    assert not result.modified and result.model is model
    assert all(n.action == "skipped" for n in result.notes) and "no weight" in result.summary


def test_bad_bits_rejected_with_location():
    doc = {"model": "m.onnx", "passes": ["fold_batchnorm", {"quantize_codebook": {"bits": 9}}]}
    with pytest.raises(UserError, match=r"passes\[1\]\.quantize_codebook\.bits: must be in \[1, 8\], got 9"):
        parse_recipe(doc, Path("r.yaml"))


def test_channel_scaled_codebook_beats_uniform_int4_per_channel():
    """One k-means codebook over channel-normalised values, times a per-channel scale (Gather -> Mul):
    the same scale bytes as uniform int4 per channel plus 16 floats, and a smaller error on every tensor."""
    model = toy_model(seed=3)
    cb = apply(model, bits=4, granularity="channel_scaled", min_elements=0)
    uni = apply(model, "quantize_weights", bits=4, min_elements=0)
    out = cb.model
    onnx.checker.check_model(out, full_check=True)
    producers = {o: n for n in out.graph.node for o in n.output}
    conv0 = next(n for n in out.graph.node if n.name == "conv_0")
    mul = producers[conv0.input[1]]
    assert mul.op_type == "Mul" and producers[mul.input[0]].op_type == "Gather"
    assert list(initializer(out, "W1_channel_scale").dims) == [16, 1, 1, 1]
    assert list(initializer(out, "M_channel_scale").dims) == [1, 10]
    cb_err = {n.reason.split()[1]: n.figures["rel_rmse"] for n in cb.notes if n.action == "clustered"}
    uni_err = {n.reason.split()[1]: n.figures["rel_rmse"] for n in uni.notes if n.action == "quantized"}
    for name in uni_err:
        assert cb_err[name] < uni_err[name], name
    ref = run(model)
    assert np.abs(run(out) - ref).mean() < np.abs(run(uni.model) - ref).mean()


def test_bias_correction_removes_the_mean_output_shift():
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8, 6, 6] x) => (float[N, 16, 4, 4] y, float[N, 5] z) {
        y = Conv (x, W, B)
        f = Flatten(x)
        z = Gemm <transB = 1> (f, G)
    }""")
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((5, 288)).astype(np.float32), "G")])
    x = (rng.standard_normal((64, 8, 6, 6)) + 1.5).astype(np.float32)
    from edgeopt.verify.runtime import make_session
    ref = make_session(model).run(None, {"x": x})
    cls = get_pass("quantize_codebook")
    shifts = {}
    for corrected in (False, True):
        params = cls.Params(bits=2, granularity="per_tensor", min_elements=0, bias_correction=corrected,
                            biases="float32")  # float32 so the Gemm correction is exact
        result = cls().apply(model, params, PassContext(data={"x": x}))
        out = make_session(result.model).run(None, {"x": x})
        shifts[corrected] = [float(np.abs((o - f).mean(axis=tuple(i for i in range(o.ndim) if i != 1))).max())
                             for o, f in zip(out, ref)]
    assert shifts[False][0] > 1.0 and shifts[False][1] > 1.0
    assert shifts[True][1] < 1e-4  # Gemm: exact
    assert shifts[True][0] < 0.05 * shifts[False][0]  # Conv: the window means differ slightly from the map mean
    result = cls().apply(model, cls.Params(bits=2, min_elements=0, bias_correction=True), PassContext(data={"x": x}))
    assert all("bias_shift_max" in n.figures for n in result.notes if n.action == "clustered")
