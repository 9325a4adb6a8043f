"""Quantization passes on builder ImageNet-style models as old exports (opset 11, Constant weights)."""

import numpy as np
import onnx
import pytest

from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import profile_model
from edgeopt.verify.fidelity import compare
from edgeopt.verify.runtime import make_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def old_mobilenet():
    from edgeopt.zoo import build_mobilenet_v2, weights_as_constants

    model = weights_as_constants(build_mobilenet_v2(width_mult=0.5, resolution=96, opset=11))
    assert model.opset_import[0].version == 11
    assert any(n.op_type == "Constant" for n in model.graph.node)
    return model


@pytest.fixture(scope="module")
def images():
    return {"input": np.random.default_rng(0).standard_normal((8, 3, 96, 96)).astype(np.float32)}


def _apply(name, model, data=None, **params):
    cls = get_pass(name)
    return cls().apply(model, cls.Params(**params), PassContext(data=data, input_shapes={"input": [1, 3, 96, 96]}))


def _fidelity(a, b, feeds):
    return compare(make_session(a).run(None, feeds), make_session(b).run(None, feeds))


def test_static_int8_on_an_old_export(old_mobilenet, images):
    result = _apply("quantize_static", old_mobilenet, images, mode="all", samples=8)
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    assert q.opset_import[0].version >= 13
    inits = {t.name: t.data_type for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) > 40
    assert not any(n.op_type in ("BatchNormalization", "Constant") for n in q.graph.node)
    for conv in convs:
        assert inits[producers[conv.input[1]].input[0]] == onnx.TensorProto.INT8
    assert _fidelity(old_mobilenet, q, images)["cosine"] > 0.85  # random weights: 0.91 measured
    assert profile_model(q).totals["weight_bytes"] < 0.3 * profile_model(old_mobilenet).totals["weight_bytes"]


def test_int4_weights_upgrade_an_old_export(old_mobilenet, images):
    result = _apply("quantize_weights", old_mobilenet, bits=4, granularity="block", block_size=32,
                    scale_dtype="float16")
    assert result.modified and "opset upgraded 11 -> 21" in result.summary
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    assert sum(t.data_type == onnx.TensorProto.INT4 for t in q.graph.initializer) > 40
    # BNs are not folded by this pass: weight bytes are dominated by the int4 convs all the same
    ratio = profile_model(old_mobilenet).totals["weight_bytes"] / profile_model(q).totals["weight_bytes"]
    assert ratio > 4.0
    assert _fidelity(old_mobilenet, q, images)["cosine"] > 0.6  # random weights: 0.78 measured
