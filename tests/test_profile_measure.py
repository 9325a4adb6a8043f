"""measure_latency: median of a time-budgeted series; CPU clock by default, wall clock on request."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgeopt.profile import make_session, measure_latency, random_feeds


def relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_measure_model_and_session():
    model = relu_model()
    feeds = {"x": np.ones((1, 64), np.float32)}
    start = time.perf_counter()
    ms = measure_latency(model, feeds, max_seconds=0.05)
    assert 0 < ms < 50
    assert time.perf_counter() - start < 5
    session = make_session(model)
    assert measure_latency(session, feeds, max_seconds=0.02, clock="wall") > 0


def test_random_feeds_follow_the_shapes():
    session = make_session(relu_model())
    feeds = random_feeds(session, {"x": [3, 64]})
    assert feeds["x"].shape == (3, 64) and feeds["x"].dtype == np.float32


def test_auto_clock_follows_the_session_threads(monkeypatch):
    from edgeopt.profile import measure

    model = relu_model()
    assert measure._single_threaded(make_session(model)) is True
    assert measure._single_threaded(make_session(model, threads=None)) is False
    seen = []
    real = time.process_time
    monkeypatch.setattr(measure.time, "process_time", lambda: seen.append(1) or real())
    measure_latency(make_session(model, threads=None), {"x": np.ones((1, 64), np.float32)}, max_seconds=0.01)
    assert not seen  # a thread pool is timed by wall clock


def test_bad_clock():
    with pytest.raises(ValueError, match="clock"):
        measure_latency(relu_model(), {"x": np.ones((1, 64), np.float32)}, clock="sundial")
