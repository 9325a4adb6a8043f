"""Structural verification: onnx.checker plus strict shape inference (= checker full_check).

Both serialize the model they are given; on a 100 MB model that is most of
their time. They check the graph, not the weight bytes, so they run on a
light copy whose large initializers are declared as typed graph inputs
instead (onnxruntime, which loads the real model next, checks the weights).
"""

from __future__ import annotations

import onnx

LIGHT_LIMIT = 4096  # initializers with more elements than this are declared, not copied


class ModelInvalid(Exception):
    """The model fails the checker or shape inference; the message says where."""


def light_copy(model: onnx.ModelProto, limit: int = LIGHT_LIMIT) -> onnx.ModelProto:
    """The model with every initializer of more than `limit` elements turned into a typed graph input."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    graph, light_graph = model.graph, light.graph
    _copy_fields(graph, light_graph, skip="initializer")
    declared = {vi.name for vi in graph.input}
    for init in graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if size <= limit:
            light_graph.initializer.append(init)
        elif init.name not in declared:
            light_graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _copy_fields(source, target, skip: str) -> None:
    for desc, value in source.ListFields():
        if desc.name == skip:
            continue
        if isinstance(value, (list,)) or hasattr(value, "extend"):
            getattr(target, desc.name).extend(value)
        elif desc.message_type:
            getattr(target, desc.name).CopyFrom(value)
        else:
            setattr(target, desc.name, value)


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
