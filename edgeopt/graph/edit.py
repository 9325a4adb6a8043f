"""Graph editing through onnx_ir: in and out of protobuf, constants, new initializers.

Passes take and return onnx.ModelProto; inside they edit an onnx_ir.Model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)


def to_ir(model: onnx.ModelProto, lift_constants: bool = True) -> ir.Model:
    """Deserialize a model for editing; the proto is left untouched.

    With lift_constants, weights held in Constant nodes (common in old
    exports) become initializers, so passes see one kind of weight.
    """
    ir_model = ir.from_proto(model)
    if lift_constants:
        LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(ir_model)
        _detach_lifted_tensors(ir_model.graph)
    return ir_model


def _detach_lifted_tensors(graph: ir.Graph) -> None:
    """Copy the tensors lifted from Constant nodes whose name differs from their value's.

    Serializing writes the value's name into the TensorProto a tensor wraps, which
    for a lifted Constant is the input model's own attribute: without the copy,
    to_proto would edit the caller's model.
    """
    for value in graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.serde.TensorProtoTensor) and tensor.name != value.name:
            proto = onnx.TensorProto()
            proto.CopyFrom(tensor.raw)
            proto.name = value.name
            value.const_value = ir.serde.TensorProtoTensor(proto)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Drop what the edit left unused, sort topologically, serialize."""
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    return ir.to_proto(model)


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant content (initializer or Constant node output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def is_graph_input(value: ir.Value) -> bool:
    return value.is_graph_input()


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer with a name not yet used in the graph."""
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    unique, i = name, 1
    while unique in taken:
        unique, i = f"{name}_{i}", i + 1
    value = ir.Value(name=unique, const_value=ir.tensor(np.ascontiguousarray(array).reshape(array.shape), name=unique),
                     shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def single_consumer(value: ir.Value) -> ir.Node | None:
    """The only node that reads value, if it has exactly one reader and is not a graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def opset(model: ir.Model, domain: str = "") -> int:
    return model.opset_imports.get(domain, 1)
