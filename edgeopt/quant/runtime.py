"""The safety net every quantization pass ends with: the result must still load in onnxruntime."""

from __future__ import annotations

import onnx

from edgeopt.verify.runtime import make_session, ort_message


def ort_load_error(model: onnx.ModelProto) -> str | None:
    """None if onnxruntime builds a session for the model, else its error in one line."""
    try:
        make_session(model)
    except Exception as exc:  # onnxruntime raises its own exception types
        return ort_message(exc)
    return None
