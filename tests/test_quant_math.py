"""edgeopt.quant math: scales and zero points by hand, int4 packing order, round-trip bounds, k-means."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgeopt.quant import compute_qparams, dequantize, kmeans_1d, pack_int4, quantize, qrange, unpack_int4
from edgeopt.quant.decode import int_tensor
import onnx_ir as ir


def test_qrange():
    assert qrange(8, True) == (-128, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-8, 7)
    assert qrange(4, False) == (0, 15)


def test_symmetric_per_tensor_by_hand():
    w = np.array([-1.27, 0.5, 0.0, 0.635], np.float32)
    qp = compute_qparams(w, 8, symmetric=True)
    assert qp.scale == pytest.approx(1.27 / 127)  # max|w| / 127
    assert int(qp.zero_point) == 0
    assert quantize(w, qp).tolist() == [-127, 50, 0, 64]  # 0.635/0.01 = 63.5 -> 64 (half to even)


def test_asymmetric_per_tensor_by_hand():
    w = np.array([-0.5, 0.0, 1.0, 2.0], np.float32)
    qp = compute_qparams(w, 8, symmetric=False)
    assert qp.scale == pytest.approx(2.5 / 255)  # (max - min) / 255
    assert int(qp.zero_point) == 51  # round(0 - (-0.5) / scale) = round(51.0)
    q = quantize(w, qp)
    assert q.tolist() == [0, 51, 153, 255]
    # zero is exact: padding and ReLU zeros survive
    assert dequantize(q, qp)[1] == 0.0


def test_asymmetric_positive_tensor_keeps_zero_in_range():
    w = np.array([1.0, 2.0, 3.0], np.float32)
    qp = compute_qparams(w, 4, symmetric=False)
    assert int(qp.zero_point) == 0 and qp.scale == pytest.approx(3.0 / 15)


def test_per_channel_by_hand():
    w = np.array([[1.5, -2.0], [0.1, 0.03], [0.0, 0.0]], np.float32)
    qp = compute_qparams(w, 4, symmetric=True, axis=0)
    np.testing.assert_allclose(qp.scale, [2.0 / 7, 0.1 / 7, 1.0], rtol=1e-6)  # all-zero channel: scale 1
    assert quantize(w, qp).tolist() == [[5, -7], [7, 2], [0, 0]]  # 1.5*7/2 = 5.25 -> 5; 0.03*70 = 2.1 -> 2


def test_block_layout_and_partial_last_block():
    w = np.arange(2 * 5, dtype=np.float32).reshape(2, 5) - 4.0
    qp = compute_qparams(w, 8, symmetric=True, axis=1, block_size=2)
    assert qp.scale.shape == (2, 3)  # ceil(5 / 2) blocks per row
    # row 0 = [-4,-3 | -2,-1 | 0]: absmax per block 4, 2, 0 -> scales 4/127, 2/127, 1 (all zero)
    np.testing.assert_allclose(qp.scale[0], [4 / 127, 2 / 127, 1.0], rtol=1e-6)
    np.testing.assert_allclose(dequantize(quantize(w, qp), qp), w, atol=4 / 127 / 2 + 1e-6)


@pytest.mark.parametrize("bits,symmetric,axis,block", [
    (8, True, None, None), (8, False, None, None), (8, True, 0, None), (8, False, 1, None),
    (4, True, 0, None), (4, False, 0, None), (4, True, 1, 16), (4, False, 1, 32), (8, True, 1, 32)])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, axis, block):
    w = np.random.default_rng(0).standard_normal((8, 70)).astype(np.float32)
    qp = compute_qparams(w, bits, symmetric, axis=axis, block_size=block)
    from edgeopt.quant.qparams import expand
    step = expand(qp.scale, w.shape, axis, block).astype(np.float32)
    err = np.abs(dequantize(quantize(w, qp), qp) - w)
    assert np.all(err <= step / 2 + 1e-6)
    levels = (1 << bits) - (1 if symmetric else 0)
    # the step is the group's range over the level count: no wider than needed
    assert np.max(step) <= (np.max(w) - np.min(w)) / (levels - 1) * 2 + 1e-6


def test_mse_clip_never_worse_than_minmax():
    rng = np.random.default_rng(1)
    w = rng.standard_t(2, size=(16, 64)).astype(np.float32)  # heavy tails: clipping pays off
    for bits in (4, 8):
        a = compute_qparams(w, bits, True, axis=0)
        b = compute_qparams(w, bits, True, axis=0, clip="mse")
        ea = np.sum((dequantize(quantize(w, a), a) - w) ** 2, axis=1)
        eb = np.sum((dequantize(quantize(w, b), b) - w) ** 2, axis=1)
        assert np.all(eb <= ea + 1e-9)
        if bits == 4:
            assert np.sum(eb) < 0.9 * np.sum(ea)


def test_float16_scales_decode_consistently():
    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    qp = compute_qparams(w, 4, True, axis=1, block_size=32, scale_dtype=np.float16)
    assert qp.scale.dtype == np.float16
    from edgeopt.quant.qparams import expand
    step = expand(qp.scale.astype(np.float32), w.shape, 1, 32)
    assert np.all(np.abs(dequantize(quantize(w, qp), qp) - w) <= step / 2 * 1.01 + 1e-6)


def test_int4_packing_order_low_nibble_first():
    packed = pack_int4(np.array([1, -2, 3, -8, 7]))
    # element 0 in bits 0-3, element 1 in bits 4-7; -2 = 0xE, -8 = 0x8; odd count pads a zero nibble
    assert packed.tolist() == [0xE1, 0x83, 0x07]
    assert unpack_int4(packed, 5, signed=True).tolist() == [1, -2, 3, -8, 7]
    assert pack_int4(np.array([15, 0, 9])).tolist() == [0x0F, 0x09]
    assert unpack_int4(pack_int4(np.array([15, 0, 9])), 3, signed=False).tolist() == [15, 0, 9]
    with pytest.raises(ValueError):
        pack_int4(np.array([16]))


def test_int4_packing_agrees_with_onnx_and_onnxruntime():
    q = np.random.default_rng(3).integers(-8, 8, size=(3, 7))
    proto = ir.serde.serialize_tensor(int_tensor(q, 4, True))
    assert proto.data_type == onnx.TensorProto.INT4
    assert proto.raw_data == pack_int4(q).tobytes()
    assert numpy_helper.to_array(proto).astype(np.int64).tolist() == q.tolist()
    proto.name = "q"
    scale = numpy_helper.from_array(np.array(1.0, np.float32), "s")
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 7])],
                              initializer=[proto, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert y.astype(np.int64).tolist() == q.tolist()


def test_kmeans_recovers_clusters_and_is_deterministic():
    rng = np.random.default_rng(4)
    centers = np.array([-1.0, -0.2, 0.3, 2.0])
    x = (centers[rng.integers(0, 4, 4000)] + rng.normal(0, 0.01, 4000)).reshape(40, 100)
    c1, i1 = kmeans_1d(x, 4)
    c2, i2 = kmeans_1d(x, 4)
    assert np.array_equal(c1, c2) and np.array_equal(i1, i2)
    np.testing.assert_allclose(np.sort(c1), centers, atol=0.005)
    assert i1.shape == x.shape and np.max(np.abs(c1[i1] - x)) < 0.05


def test_kmeans_beats_uniform_levels_at_same_bits():
    w = np.random.default_rng(5).standard_normal(5000).astype(np.float32)
    c, idx = kmeans_1d(w, 16)
    qp = compute_qparams(w, 4, symmetric=False)
    mse_kmeans = np.mean((c[idx] - w) ** 2)
    mse_uniform = np.mean((dequantize(quantize(w, qp), qp) - w) ** 2)
    assert mse_kmeans < 0.6 * mse_uniform


@pytest.mark.parametrize("seed,dist", [(7, "normal"), (8, "laplace"), (9, "outlier rows")])
def test_scaled_codebook_never_worse_than_uniform_int4(seed, dist):
    """One shared codebook over channel-scaled rows starts from uniform int4 (MSE-clipped per-row
    scales) and only lowers the squared error from there."""
    from edgeopt.quant.kmeans import scaled_codebook
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(32, 72)) if dist == "laplace" else rng.standard_normal((32, 72))
    w *= rng.uniform(0.05, 2.0, size=(32, 1))  # rows of very different ranges
    if dist == "outlier rows":
        w[::5, 0] *= 12.0
    w = w.astype(np.float32)
    c, s, idx = scaled_codebook(w, 4)
    assert c.shape == (16,) and s.shape == (32,) and idx.shape == w.shape and 0.0 in c.tolist()
    sse_codebook = np.sum((s[:, None] * c[idx] - w) ** 2)
    qp = compute_qparams(w, 4, True, axis=0, clip="mse")
    sse_uniform = np.sum((dequantize(quantize(w, qp), qp) - w) ** 2)
    assert sse_codebook < 0.97 * sse_uniform
    c2, s2, idx2 = scaled_codebook(w, 4)
    assert np.array_equal(c, c2) and np.array_equal(s, s2) and np.array_equal(idx, idx2)  # deterministic


def test_scaled_codebook_zero_rows_decode_to_zero():
    from edgeopt.quant.kmeans import scaled_codebook
    w = np.random.default_rng(10).standard_normal((6, 20)).astype(np.float32)
    w[2] = 0.0
    c, s, idx = scaled_codebook(w, 3)
    assert np.all(s > 0) and np.all(s[2] * c[idx[2]] == 0.0)


def test_kmeans_fewer_distinct_values_than_centroids():
    c, idx = kmeans_1d(np.array([0.5, 0.5, -1.0]), 16)
    assert c.shape == (16,) and np.array_equal(c[idx], np.array([0.5, 0.5, -1.0], np.float32))


def test_kmeans_pin_zero_keeps_an_exact_zero_level():
    x = np.random.default_rng(6).standard_normal(3000) + 0.37
    c, idx = kmeans_1d(x, 16, pin_zero=True)
    assert 0.0 in c.tolist()
    free, _ = kmeans_1d(x, 16)
    assert 0.0 not in free.tolist()


def test_mse_clip_on_a_short_last_block_counts_only_real_values():
    """A partial block's error is the sum over its real values (not padded copies of the first)."""
    w = np.array([[5.0, 0.1, -0.2, 0.3, 0.25, -0.15, 0.05, 0.2, -0.3]], np.float32)  # one block of 9 in 32
    blk = compute_qparams(w, 4, True, axis=1, block_size=32, clip="mse")
    row = compute_qparams(w, 4, True, axis=0, clip="mse")
    np.testing.assert_allclose(blk.scale.reshape(-1), row.scale.reshape(-1), rtol=1e-6)


def test_scaled_codebook_on_a_column_sample_still_never_worse_than_int4(monkeypatch):
    """Large tensors are refined on evenly spaced columns and finished on all values; the uniform
    start, scored on every value, stays a candidate."""
    import edgeopt.quant.kmeans as km
    monkeypatch.setattr(km, "REFINE_VALUES", 4096)
    rng = np.random.default_rng(11)
    w = (rng.laplace(size=(64, 512)) * rng.uniform(0.05, 2.0, size=(64, 1))).astype(np.float32)
    c, s, idx = km.scaled_codebook(w, 4)
    assert idx.shape == w.shape
    sse = np.sum((s[:, None] * c[idx] - w) ** 2)
    qp = compute_qparams(w, 4, True, axis=0, clip="mse")
    assert sse < 0.9 * np.sum((dequantize(quantize(w, qp), qp) - w) ** 2)
    monkeypatch.setattr(km, "REFINE_VALUES", 1 << 30)
    c_all, s_all, idx_all = km.scaled_codebook(w, 4)  # refined on every value: at most slightly better
    assert np.sum((s_all[:, None] * c_all[idx_all] - w) ** 2) <= sse * 1.0001
