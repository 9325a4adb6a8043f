"""Structural verification: onnx.checker plus strict shape inference (= checker full_check)."""

from __future__ import annotations

import onnx


class ModelInvalid(Exception):
    """The model fails the checker or shape inference; the message says where."""


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the full check and return the model with inferred shapes (for the profiler to reuse)."""
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelInvalid(_short(exc)) from None


def _short(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    return text[:400]
