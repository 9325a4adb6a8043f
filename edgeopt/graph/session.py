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


def computes_in_float16(model: onnx.ModelProto) -> bool:
    """Float16 weights, inputs or Casts into float16 (what convert_fp16 and float16 exports produce)."""
    graph = model.graph
    return (any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
            or any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in graph.input)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
                   for n in graph.node))


def disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """onnxruntime's NCHWc layout pass crashes the process (SIGSEGV at session creation, onnxruntime 1.32
    on x86-64) on float16 MatMul -> Transpose -> MatMul at fixed shapes, the attention of every PyTorch
    transformer after convert_fp16. It only rewrites float32 convolutions, so float16 models lose nothing."""
    return ["NchwcTransformer"] if computes_in_float16(model) else []


def open_session(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session; raises onnxruntime's own errors."""
    kwargs = {"providers": ["CPUExecutionProvider"], "disabled_optimizers": disabled_optimizers(model)}
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
    with tempfile.TemporaryDirectory(prefix="edgeopt-session-") as folder:
        path = os.path.join(folder, "model.onnx")
        save_model(model, path, external_data=True, sync=False)
        return ort.InferenceSession(path, options, **kwargs)
