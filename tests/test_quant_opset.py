"""Raising a model's opset (quant/opset.ensure_opset) keeps what it computes, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeopt.quant.opset import default_opset, ensure_opset
from edgeopt.verify.runtime import make_session


def upsampling_model(mode: str, opset: int) -> onnx.ModelProto:
    """A conv, then x2 Upsample (opset 9) or Resize (opset 10): what PyTorch exports at those opsets."""
    op = "Upsample" if opset < 10 else "Resize"
    model = onnx.parser.parse_model(f"""<ir_version: 5, opset_import: ["" : {opset}]>
    g (float[1, 3, 7, 9] x) => (float[1, 4, 14, 18] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        scales = Constant <value = float[4] {{1.0, 1.0, 2.0, 2.0}}> ()
        y = {op} <mode = "{mode}"> (c, scales)
    }}""")
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weights, "W"))
    return model


@pytest.mark.parametrize("opset", [9, 10])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_upsampling_computes_the_same_after_the_upgrade(mode, opset):
    """onnx's converter left Resize 11's half_pixel default in place of the old asymmetric sampling."""
    model = upsampling_model(mode, opset)
    upgraded, note = ensure_opset(model, 13)
    assert default_opset(upgraded) == 13 and note == f"opset upgraded {opset} -> 13"
    resize = next(n for n in upgraded.graph.node if n.op_type == "Resize")
    attrs = {a.name: a.s.decode() for a in resize.attribute}
    assert attrs["coordinate_transformation_mode"] == "asymmetric"
    assert attrs.get("nearest_mode") == ("floor" if mode == "nearest" else None)
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 7, 9)).astype(np.float32)}
    before, after = (make_session(m).run(None, x)[0] for m in (model, upgraded))
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


def test_a_weight_pass_refuses_an_upgrade_that_changes_the_numbers(monkeypatch):
    """Should another adapter change what a model computes, the pass says so and leaves the model as it
    was, instead of quantizing a different model and reporting the difference as quantization error."""
    import edgeopt.quant.opset as opset
    from edgeopt.passes import PassContext, get_pass

    cls = get_pass("quantize_weights")
    model = upsampling_model("linear", 9)
    kept = cls().apply(model, cls.Params(min_elements=1), PassContext())
    assert kept.modified and "opset upgraded 9 -> 13" in kept.summary
    monkeypatch.setattr(opset, "_keep_resize_10_semantics", lambda graph: None)  # the adapter as onnx ships it
    refused = cls().apply(model, cls.Params(min_elements=1), PassContext())
    assert not refused.modified and refused.model is model
    assert "onnx's version converter gives a model that computes something else" in refused.summary
