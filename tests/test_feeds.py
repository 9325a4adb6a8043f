"""Slicing samples out of feeds whose inputs keep their batch on different axes (verify/feeds.py)."""

import numpy as np
import onnx

from edgeopt.graph.shapes import batch_axes, output_batch_axes
from edgeopt.verify.feeds import Feeds, concat_samples, sample_count, take, take_index


def _vad_like():
    # silero-style: audio batch first, recurrent state batch second, a shared scalar, a shared fixed tensor
    return {"input": np.arange(4 * 3, dtype=np.float32).reshape(4, 3),
            "state": np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5),
            "sr": np.array(16000, dtype=np.int64),
            "h0": np.ones((1, 1, 5), dtype=np.float32)}


def test_each_input_is_sliced_on_its_own_batch_axis():
    feeds = _vad_like()
    part = take(feeds, 1, 3)
    assert sample_count(part) == 2
    np.testing.assert_array_equal(part["input"], feeds["input"][1:3])
    np.testing.assert_array_equal(part["state"], feeds["state"][:, 1:3])
    assert part["sr"] is feeds["sr"] and part["h0"] is feeds["h0"]  # shared, passed whole


def test_take_index_picks_the_same_samples_on_every_axis():
    feeds = _vad_like()
    part = take_index(feeds, np.array([3, 0]))
    np.testing.assert_array_equal(part["input"], feeds["input"][[3, 0]])
    np.testing.assert_array_equal(part["state"], feeds["state"][:, [3, 0]])


def test_chunks_join_back_along_their_batch_axis():
    state = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    parts, sizes = [state[:, 0:2], state[:, 2:4], state[:, 4:5]], [2, 2, 1]
    np.testing.assert_array_equal(concat_samples(parts, sizes), state)
    logits = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(concat_samples([logits[:2], logits[2:4], logits[4:]], sizes), logits)


def test_named_batch_axes_resolve_what_sizes_cannot():
    # batch 2 and a leading state dim of 2: only the model's `batch` symbol says which axis is which
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["state"], ["state_out"])], "g",
        [vi("input", onnx.TensorProto.FLOAT, ["batch", 3]), vi("state", onnx.TensorProto.FLOAT, [2, "batch", 5])],
        [vi("state_out", onnx.TensorProto.FLOAT, [2, "batch", 5])])
    model = onnx.helper.make_model(graph)
    axes = batch_axes(model)
    assert axes == {"input": 0, "state": 1}
    assert output_batch_axes(model) == {"state_out": 1}
    state = np.arange(2 * 2 * 5).reshape(2, 2, 5)
    feeds = Feeds({"input": np.zeros((2, 3)), "state": state}, axes)
    np.testing.assert_array_equal(take(feeds, 1, 2)["state"], state[:, 1:2])
    # without the names, the size rule takes axis 0
    np.testing.assert_array_equal(take(dict(feeds), 1, 2)["state"], state[1:2])
