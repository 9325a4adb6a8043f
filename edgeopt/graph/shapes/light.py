"""The light copy every whole-graph check and shape inference runs on.

onnx's checker and shape inference serialize the model they are given; on a
100 MB model that is most of their time. They need the graph, not the weight
bytes: large initializers become typed graph inputs, small ones (shape
arguments that inference reads as values, biases) are kept with their data.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

LIGHT_LIMIT = 4096  # initializers with more elements than this are declared, not copied


def light_copy(model: onnx.ModelProto, limit: int = LIGHT_LIMIT,
               input_shapes: dict[str, list[int | None]] | None = None) -> onnx.ModelProto:
    """The model with every initializer of more than `limit` elements (or with external data)
    turned into a typed graph input; `input_shapes` (None dims: as the model has them) are set
    on the copy's inputs. The model itself is not modified."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip=("graph",))
    graph, light_graph = model.graph, light.graph
    _copy_fields(graph, light_graph, skip=("initializer", "input"))
    light_graph.input.extend(graph.input)
    for vi in light_graph.input:
        if input_shapes and vi.name in input_shapes:
            set_dims(vi, input_shapes[vi.name])
    declared = {vi.name: vi for vi in light_graph.input}
    for init in graph.initializer:
        if math.prod(init.dims) <= limit and init.data_location != TensorProto.EXTERNAL:
            light_graph.initializer.append(init)
        elif init.name in declared:  # IR < 4 lists initializers as inputs too: give it the real type
            declared[init.name].CopyFrom(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            light_graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def set_dims(vi: onnx.ValueInfoProto, dims: list[int | None]) -> None:
    """Give a value these dims (None: keep that dim as it is when the rank agrees, else unknown)."""
    shape = vi.type.tensor_type.shape
    old = list(shape.dim)
    shape.ClearField("dim")
    for axis, d in enumerate(dims):
        new = shape.dim.add()
        if d is not None:
            new.dim_value = d
        elif len(old) == len(dims):
            new.CopyFrom(old[axis])


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    for desc, value in source.ListFields():
        if desc.name in skip:
            continue
        if desc.is_repeated:
            getattr(target, desc.name).extend(value)
        elif desc.message_type:
            getattr(target, desc.name).CopyFrom(value)
        else:
            setattr(target, desc.name, value)
