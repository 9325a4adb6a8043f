"""The safety net every quantization pass ends with: the result must still load in onnxruntime."""

from __future__ import annotations

import onnx

from edgeopt.verify.runtime import make_session


def ort_load_error(model: onnx.ModelProto) -> str | None:
    """None if onnxruntime builds a session for the model, else its error in one line."""
    try:
        make_session(model)
    except Exception as exc:  # onnxruntime raises its own exception types
        return " ".join(str(exc).split())[:300]
    return None


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed leading dimension of the model's first real input, or None when it is free."""
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value
    return None
