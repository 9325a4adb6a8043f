"""Verification pieces: the light copy the checker runs on, fidelity figures, input data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import tiny_classifier
from edgeopt.errors import VerificationError
from edgeopt.pipeline import _verify
from edgeopt.verify.inputs import random_inputs
from edgeopt.verify.check import ModelInvalid, check_model, light_copy
from edgeopt.verify.fidelity import accuracy, compare, output_scale


def test_light_copy_declares_big_weights_and_keeps_small_ones():
    model = tiny_classifier()
    light = light_copy(model, limit=16)
    kept = {t.name for t in light.graph.initializer}
    declared = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in light.graph.input}
    assert kept == {"conv.b", "bn.scale", "bn.bias", "bn.mean", "bn.var", "fc.b"}
    assert declared["conv.w"] == [8, 3, 3, 3] and declared["fc.w"] == [4, 8]
    assert len(model.graph.initializer) == 8 and len(model.graph.input) == 1  # the original is untouched
    assert [n.name for n in light.graph.node] == [n.name for n in model.graph.node]


def test_a_big_weight_of_the_wrong_shape_fails_verification():
    # onnx's checker (full check included) does not see this; onnxruntime does, and verification runs both.
    model = tiny_classifier()
    for i, init in enumerate(model.graph.initializer):
        if init.name == "conv.w":  # 5 input channels where the input has 3
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros((8, 5, 3, 3), np.float32), "conv.w"))
    inputs = random_inputs(model, {"input": [1, 3, 8, 8]})
    with pytest.raises(VerificationError, match="pass x produced a model that fails in onnxruntime"):
        _verify(model, "pass x", inputs)


def test_check_catches_a_dangling_input():
    model = tiny_classifier()
    model.graph.node[2].input[0] = "nowhere"
    with pytest.raises(ModelInvalid, match="nowhere"):
        check_model(model)


def test_check_accepts_a_valid_model():
    inferred = check_model(tiny_classifier())
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in inferred.graph.value_info}
    assert shapes["c"] == ["N", 8, 8, 8]


def test_compare_by_hand():
    ref = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    cand = [np.array([[1.0, 0.0], [1.0, 0.0]])]
    result = compare(ref, cand)
    assert result["cosine"] == pytest.approx(0.5)
    assert result["max_abs_error"] == 1.0
    assert result["top1_agreement"] == 0.5
    assert accuracy(cand, np.array([0, 1])) == 0.5
    assert output_scale([np.array([0.1, -3.0])]) == 3.0
    assert output_scale([np.array([0.1, -0.2])]) == 1.0  # at least 1


def test_compare_flags_nan_and_size_changes():
    assert "NaN" in compare([np.ones(3)], [np.array([1.0, np.nan, 1.0])])["problem"]
    assert "sizes differ" in compare([np.ones(3)], [np.ones(4)])["problem"]



def test_feeds_slice_batched_inputs_and_pass_scalars_whole():
    from edgeopt.verify.feeds import sample_count, take, take_index
    feeds = {"flag": np.array(True), "x": np.arange(10).reshape(5, 2)}
    assert sample_count(feeds) == 5 and sample_count({"flag": np.array(1.0)}) == 1
    part = take(feeds, 1, 3)
    assert part["flag"].ndim == 0 and part["x"].tolist() == [[2, 3], [4, 5]]
    assert take(feeds, 2)["x"].shape == (2, 2)
    assert take_index(feeds, np.array([4, 0]))["x"][:, 0].tolist() == [8, 0]
