"""split_spatial / split_depthwise with target_macs: sizes chosen across layers, cheapest error per MAC."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import profile_model
from edgeopt.verify.runtime import make_session

SHAPES = {"input": [1, 8, 10, 10]}


def robust_and_sensitive() -> onnx.ModelProto:
    """conv_a 3x3 8->16 (random: every rank costs) -> Relu -> conv_b 3x3 16->16 of spatial rank 2 (robust).

    MACs: conv_a 100*16*8*9 = 115200, conv_b 100*16*16*9 = 230400."""
    rng = np.random.default_rng(5)
    wa = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.3
    # rows (in_channel, kh), columns (out_channel, kw): rank 2
    m = rng.standard_normal((16 * 3, 2)) @ rng.standard_normal((2, 16 * 3)) * 0.1
    wb = m.reshape(16, 3, 16, 3).transpose(2, 0, 1, 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["out"], name="conv_b", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 10, 10])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16, 10, 10])],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def feeds(n=8, seed=1):
    return {"input": np.random.default_rng(seed).standard_normal((n, 8, 10, 10)).astype(np.float32)}


def cosine(a, b, x) -> float:
    ya = make_session(a).run(None, x)[0].ravel().astype(np.float64)
    yb = make_session(b).run(None, x)[0].ravel().astype(np.float64)
    return float(ya @ yb / np.linalg.norm(ya) / np.linalg.norm(yb))


def macs(model) -> int:
    return profile_model(model, input_shapes=SHAPES).totals["macs"]


def split(pass_name, model, data=None, **params):
    cls = get_pass(pass_name)
    return cls().apply(model, cls.Params(**params), PassContext(data=data, input_shapes=SHAPES))


def notes(result) -> dict:
    return {n.node: n for n in result.notes}


def test_the_robust_layer_is_split_first_and_the_target_is_met():
    model = robust_and_sensitive()
    before = macs(model)
    assert before == 115200 + 230400
    half = split("split_spatial", model, target_macs=0.5, max_error=0.6)
    by = notes(half)
    assert by["conv_a"].action == "skipped" and "not needed to meet target_macs" in by["conv_a"].reason
    assert by["conv_b"].action == "split" and 2 <= by["conv_b"].figures["rank"] <= 6  # exact from rank 2
    after = macs(half.model)
    assert after <= 0.5 * before and after == 115200 + by["conv_b"].figures["macs_after"]
    assert cosine(model, half.model, feeds()) > 0.99999
    assert f"model MACs 345,600 -> {after:,}" in half.summary and "target_macs 0.5 met" in half.summary

    deeper = split("split_spatial", model, target_macs=0.3, max_error=0.6)
    by = notes(deeper)
    assert by["conv_a"].action == "split" and by["conv_b"].action == "split"
    after = macs(deeper.model)
    assert after <= 0.3 * before and "target_macs 0.3 met" in deeper.summary
    c = cosine(model, deeper.model, feeds())
    assert 0.5 < c < 0.9999  # conv_a's rank costs: a lossy split, still the same function roughly


def test_with_data_the_target_is_met_on_fitted_errors():
    model = robust_and_sensitive()
    result = split("split_depthwise", model, data=feeds(16, seed=3), target_macs=0.6, max_error=0.5)
    by = notes(result)
    assert by["conv_b"].action == "split" and by["conv_b"].figures["error_on"] == "output"
    after = macs(result.model)
    assert after <= 0.6 * macs(model) and "target_macs 0.6 met" in result.summary
    held_out = feeds(8, seed=9)
    assert cosine(model, result.model, held_out) > 1 - 2 * max(n.figures.get("error", 0) for n in result.notes) ** 2 - 0.05


def test_an_unreachable_target_is_reported_and_a_fixed_size_is_refused():
    model = robust_and_sensitive()
    result = split("split_spatial", model, target_macs=0.05)
    assert "target_macs 0.05 NOT met" in result.summary and "raise max_error" in result.summary
    assert macs(result.model) > 0.05 * macs(model)
    for name in ("split_spatial", "split_depthwise"):
        size = {"split_spatial": "rank", "split_depthwise": "depth_multiplier"}[name]
        with pytest.raises(UserError, match="target_macs chooses"):
            split(name, model, target_macs=0.5, **{size: 2})
