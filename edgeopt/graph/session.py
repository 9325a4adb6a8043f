"""An onnxruntime session for an in-memory model of any size.

Under 2 GiB the model goes to onnxruntime as bytes. Over it, protobuf cannot serialize the model:
it is written with external data to a temporary folder and loaded from the path. Measured on 3 GiB
of MatMul weights, this peaks 4.1 GB above the model; add_external_initializers (numpy copies that
onnxruntime copies again) peaks 7.3 GB above it.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from edgeopt.graph.io import needs_external_data, save_model


def open_session(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session; raises onnxruntime's own errors."""
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="edgeopt-session-") as folder:
        path = os.path.join(folder, "model.onnx")
        save_model(model, path, external_data=True, sync=False)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
