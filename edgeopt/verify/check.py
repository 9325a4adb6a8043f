"""Structural verification: onnx.checker plus strict shape inference (= checker full_check).

Both serialize the model they are given; on a 100 MB model that is most of
their time. They check the graph, not the weight bytes, so they run on the
shape layer's light copy, whose large initializers are declared as typed
graph inputs (onnxruntime, which loads the real model next, checks the weights).
"""

from __future__ import annotations

import onnx

from edgeopt.graph.shapes.light import LIGHT_LIMIT, light_copy  # noqa: F401 - light_copy re-exported


class ModelInvalid(Exception):
    """The model fails the checker or shape inference; the message says where."""


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the full check and return the (light) model with inferred shapes."""
    light = light_copy(model)
    try:
        onnx.checker.check_model(light)
        return onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelInvalid(_short(exc)) from None


def _short(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    return text[:400]
