"""The factorization math behind split_depthwise / split_spatial: SVD exactness on kernels of known
rank, error curves, patch extraction against onnxruntime, and the data-weighted fit."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.factorize import (
    ConvGeometry,
    depthwise_weight_errors,
    sample_patches,
    spatial_weight_errors,
    split_depthwise,
    split_spatial,
)
from edgeopt.factorize.search import choose_size
from edgeopt.verify.runtime import make_session


def conv_output(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs) -> np.ndarray:
    """One Conv run by onnxruntime."""
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return make_session(model).run(None, {"x": x})[0]


def depthwise_product(split) -> np.ndarray:
    """The KxK weights a depthwise + pointwise pair computes: W[o, c] = sum_j P[o, c*m+j] D[c*m+j]."""
    c_m, _, kh, kw = split.depthwise.shape
    m = split.multiplier
    pw = split.pointwise[:, :, 0, 0].reshape(-1, c_m // m, m).astype(np.float64)
    dw = split.depthwise.reshape(c_m // m, m, kh, kw).astype(np.float64)
    return np.einsum("ocj,cjkl->ockl", pw, dw)


def spatial_product(split) -> np.ndarray:
    return np.einsum("rck,orl->ockl", split.vertical[..., 0].astype(np.float64),
                     split.horizontal[:, :, 0, :].astype(np.float64))


def test_depthwise_svd_is_exact_on_a_kernel_of_known_rank():
    # Every input channel's [O, K*K] slice has rank 2 by construction: m = 2 must be exact, m = 1 not.
    rng = np.random.default_rng(1)
    o, c, k = 8, 5, 3
    w = np.einsum("coj,cjk->ock", rng.standard_normal((c, o, 2)), rng.standard_normal((c, 2, k * k)))
    w = w.reshape(o, c, k, k).astype(np.float32)
    errors = depthwise_weight_errors(w)
    assert errors.shape == (min(o, k * k) + 1,)
    assert errors[0] == pytest.approx(1.0)
    assert errors[1] > 0.1
    assert errors[2] < 1e-6 and errors[-1] < 1e-6
    exact = split_depthwise(w, None, 2)
    assert exact.depthwise.shape == (c * 2, 1, k, k) and exact.pointwise.shape == (o, c * 2, 1, 1)
    np.testing.assert_allclose(depthwise_product(exact), w, atol=1e-5)
    rough = split_depthwise(w, None, 1)
    assert rough.error == pytest.approx(errors[1], rel=1e-6)
    measured = np.linalg.norm(depthwise_product(rough) - w) / np.linalg.norm(w)
    assert measured == pytest.approx(rough.error, rel=1e-4)


def test_spatial_svd_is_exact_on_a_kernel_of_known_rank():
    # M[(c,kh),(o,kw)] = A B with inner dimension 3: rank 3 is exact, rank 2 is not.
    rng = np.random.default_rng(2)
    o, c, kh, kw = 6, 4, 3, 5
    m = rng.standard_normal((c * kh, 3)) @ rng.standard_normal((3, o * kw))
    w = m.reshape(c, kh, o, kw).transpose(2, 0, 1, 3).astype(np.float32)
    errors = spatial_weight_errors(w)
    assert errors.shape == (min(c * kh, o * kw) + 1,)
    assert errors[2] > 0.01 and errors[3] < 1e-6
    exact = split_spatial(w, None, 3)
    assert exact.vertical.shape == (3, c, kh, 1) and exact.horizontal.shape == (o, 3, 1, kw)
    np.testing.assert_allclose(spatial_product(exact), w, atol=1e-5)
    assert split_spatial(w, None, 2).error == pytest.approx(errors[2], rel=1e-6)


def test_full_multiplier_is_exact_for_random_weights_and_more_is_clamped():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # O = 4 < K*K = 9: m = 4 is full
    split = split_depthwise(w, None, 9)
    assert split.multiplier == 4
    np.testing.assert_allclose(depthwise_product(split), w, atol=1e-5)
    split = split_spatial(w, None, 100)
    assert split.rank == 9  # min(C*KH, O*KW) = min(9, 12)
    np.testing.assert_allclose(spatial_product(split), w, atol=1e-5)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER"},
    {"auto_pad": "VALID", "dilations": [2, 1]},
])
def test_patches_reproduce_the_conv_output(attrs):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    y = conv_output(x, w, **attrs)
    geometry = ConvGeometry.from_attributes((3, 3), attrs)
    assert geometry.output_size(9, 10) == y.shape[2:]
    patches = sample_patches(x, geometry, 10 ** 6, rng)
    assert patches.shape == (y.size // 5, 3, 3, 3)  # every output position once
    from_patches = np.einsum("sckl,ockl->so", patches, w)
    np.testing.assert_allclose(np.sort(from_patches, axis=0), np.sort(y.transpose(0, 2, 3, 1).reshape(-1, 5), axis=0),
                               atol=1e-4)
    assert len(sample_patches(x, geometry, 7, np.random.default_rng(0))) == 7


def correlated_patches(rng, n: int, c: int, k: int) -> np.ndarray:
    """Patches with strong spatial correlation and unequal channel scales, like real activations."""
    base = rng.standard_normal((n, c, 1, 1)) * rng.uniform(0.2, 3.0, (1, c, 1, 1))
    return (base + 0.3 * rng.standard_normal((n, c, k, k))).astype(np.float32)


def test_data_weighted_fit_beats_weights_only_on_the_output():
    rng = np.random.default_rng(5)
    o, c, k = 16, 6, 3
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    patches = correlated_patches(rng, 4000, c, k)
    target = np.einsum("sckl,ockl->so", patches.astype(np.float64), w) + b

    def output_error(pair_weights, bias):
        approx = np.einsum("sckl,ockl->so", patches.astype(np.float64), pair_weights) + bias
        return np.linalg.norm(approx - target) / np.linalg.norm(target)

    for m in (1, 2):
        plain = split_depthwise(w, b, m)
        weighted = split_depthwise(w, b, m, patches)
        assert weighted.error_on == "output" and weighted.refitted
        # the reported error is measured on the quarter of the patches the fit did not see
        assert weighted.error == pytest.approx(output_error(depthwise_product(weighted), weighted.bias), rel=0.05)
        assert weighted.error < 0.8 * output_error(depthwise_product(plain), b)
    for r in (2, 4):
        plain = split_spatial(w, b, r)
        weighted = split_spatial(w, b, r, patches)
        assert weighted.error == pytest.approx(output_error(spatial_product(weighted), weighted.bias), rel=0.05)
        assert weighted.error < 0.8 * output_error(spatial_product(plain), b)


def test_refit_keeps_the_weights_of_a_channel_dead_on_the_calibration_data():
    # Channel 0 is all zeros in calibration: its pointwise weights must stay the SVD ones, not collapse
    # to 0, so inputs where that channel is alive are still served.
    rng = np.random.default_rng(6)
    o, c, k = 8, 4, 3
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    patches = correlated_patches(rng, 3000, c, k)
    patches[:, 0] = 0.0
    weighted = split_depthwise(w, None, 2, patches)
    assert weighted.refitted
    plain_slice = np.linalg.svd(w[:, 0].reshape(o, k * k).astype(np.float64), compute_uv=False)
    kept = depthwise_product(weighted)[:, 0].reshape(o, k * k)
    # the dead channel's rank-2 approximation keeps its size (within 5 %) instead of vanishing
    assert np.linalg.norm(kept) == pytest.approx(np.sqrt((plain_slice[:2] ** 2).sum()), rel=0.05)


def test_choose_size_takes_the_smallest_within_budget_and_says_why_not():
    errors = np.array([1.0, 0.5, 0.3, 0.1, 0.0])

    class Fit:
        def __init__(self, size):
            self.size, self.error = size, errors[size]

    saving = lambda s: 1 - s / 3  # noqa: E731  size 3 saves 0 %
    chosen = choose_size(4, None, saving, Fit, max_error=0.35, min_saving=0.1)
    assert chosen.split.size == 2
    assert choose_size(4, None, saving, Fit, 0.35, 0.1, weight_errors=errors).split.size == 2
    skipped = choose_size(4, None, saving, Fit, max_error=0.2, min_saving=0.1, what="m")
    assert skipped.split is None
    assert skipped.reason == ("output error 0.3 at m=2 (the largest m that saves 10% of its MACs) "
                              "exceeds max_error 0.2")
    fixed = choose_size(4, 3, saving, Fit, max_error=1.0, min_saving=0.1)
    assert fixed.split is None and fixed.reason == "m=3 saves 0% of the layer's MACs, less than min_macs_saving 10%"


def test_thin_calibration_falls_back_towards_the_weights_fit():
    # 6 patches for a layer with C*KH = 48: an unshrunk whitened fit would match those 6 and
    # generalize badly; the shrunk one must do about as well as the weights-only fit on fresh data.
    rng = np.random.default_rng(7)
    o, c, k = 16, 16, 3
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    thin = correlated_patches(rng, 6, c, k)
    fresh = correlated_patches(rng, 3000, c, k).astype(np.float64)
    target = np.einsum("sckl,ockl->so", fresh, w)

    def fresh_error(product, bias):
        approx = np.einsum("sckl,ockl->so", fresh, product) + (0 if bias is None else bias)
        return np.linalg.norm(approx - target) / np.linalg.norm(target)

    for rank in (4, 8, 16):
        weighted = split_spatial(w, None, rank, thin)
        assert not weighted.refitted  # 6 patches cannot refit 3*rank weights per output
        assert fresh_error(spatial_product(weighted), weighted.bias) <= 1.1 * fresh_error(
            spatial_product(split_spatial(w, None, rank)), None)
