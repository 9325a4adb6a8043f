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


def test_int8_weights_with_float16_biases_keep_onnxruntimes_layout_pass(tmp_path):
    """quantize_weights stores biases as float16. Sessions of any model holding a float16 tensor turned off
    onnxruntime's NCHWc layout pass (a crash workaround), so every int8-weight model was measured without
    it (the demo's output: 0.66 ms against 0.16 ms with the defaults). Without the crashing pattern the
    session keeps onnxruntime's defaults: the graph onnxruntime optimizes holds NCHWc convolutions."""
    import onnx
    import onnxruntime as ort

    from edgeopt.graph.session import disabled_optimizers, nchwc_crash, open_session
    from test_quant_weights import apply, toy_model

    for decode in ("cast_mul", "dequantize_linear"):
        model = apply(toy_model(), bits=8, decode=decode).model
        kinds = {t.data_type for t in model.graph.initializer}
        assert {TensorProto.INT8, TensorProto.FLOAT16} <= kinds  # int8 weights, float16 biases
        assert nchwc_crash(model) is None and disabled_optimizers(model) == []
    model = apply(toy_model(), bits=8, decode="cast_mul").model  # the demo's form: the decode folds at load
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = open_session(model, options)
    optimized = onnx.load(options.optimized_model_filepath)
    assert any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in optimized.graph.node)
    assert session.run(None, {"input": np.ones((1, 3, 8, 8), np.float32)})[0].shape == (1, 10)
