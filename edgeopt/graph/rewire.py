"""Rewiring helpers over onnx_ir for rewrite passes: read attributes and scalar
constants, and splice a node out of the graph without losing a graph output's name.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import const_array
from edgeopt.graph.shapes import light_copy


def attr(node: ir.Node, name: str, default=None):
    """The Python value of a node attribute, or `default` when it is absent."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def scalar_const(value: ir.Value | None) -> float | None:
    """The number a constant holds, if it is a constant whose elements are all equal.

    Returns None for non-constants and for constants with differing elements.
    """
    array = const_array(value)
    if array is None or array.size == 0 or array.dtype.kind not in "fiu":
        return None
    flat = array.reshape(-1)
    if not np.all(flat == flat[0]):
        return None
    return float(flat[0])


def broadcasts_into(const: ir.Value, rank: int | None) -> bool:
    """True when a constant combined elementwise with a tensor of `rank` cannot change its shape.

    That holds when the constant has only 1-sized dims (a scalar, [1], [1,1,1,1])
    and at most that rank; with dims, the rank must be known.
    """
    array = const_array(const)
    if array is None:
        return False
    if array.ndim == 0:
        return True
    if any(d != 1 for d in array.shape):
        return False
    return rank is not None and array.ndim <= rank


class RankLookup:
    """Ranks of tensors: from the value's shape, else from onnx shape inference on the
    original model (run once, only if some value needs it)."""

    def __init__(self, model: onnx.ModelProto):
        self._model = model
        self._ranks: dict[str, int] | None = None

    def rank(self, value: ir.Value | None) -> int | None:
        if value is None:
            return None
        if value.shape is not None:
            return value.shape.rank()
        if value.const_value is not None:
            return len(value.const_value.shape)
        if self._ranks is None:
            self._ranks = {}
            try:  # the light copy: inference need not serialize the weights
                inferred = onnx.shape_inference.infer_shapes(light_copy(self._model), data_prop=True)
            except Exception:  # an op onnx does not know, or a model it rejects: ranks stay unknown
                return None
            g = inferred.graph
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                    self._ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        return self._ranks.get(value.name)


def only_consumer(value: ir.Value, node: ir.Node) -> bool:
    """True when `node` is the only reader of `value` and value is not a graph output."""
    uses = list(value.uses())
    return (not value.is_graph_output()) and len(uses) > 0 and all(u.node is node for u in uses)


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The input of a binary node that is not `value` (None if both are, or neither)."""
    a, b = (list(node.inputs) + [None, None])[:2]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of `old` read `new` instead.

    When `old` is a graph output, `new` takes its name (and its type and shape
    when it has none), so the model's interface is unchanged; when `new` cannot
    be renamed (a graph input, an initializer, already a graph output) an
    Identity carries the old name.
    """
    graph = old.graph if old.graph is not None else (old.producer().graph if old.producer() else None)
    if not old.is_graph_output():
        old.replace_all_uses_with(new)
        return
    if new.type is None:
        new.type = old.type
    if new.shape is None:
        new.shape = old.shape
    name = old.name
    if new.is_graph_input() or new.is_initializer() or new.is_graph_output() or new.producer() is None:
        identity = ir.Node("", "Identity", [new], name=f"{name}_identity",
                           outputs=[ir.Value(name=None, type=old.type, shape=old.shape)])
        anchor = old.producer()
        assert graph is not None and anchor is not None
        graph.insert_after(anchor, identity)
        old.name = f"{name}__replaced"
        identity.outputs[0].name = name
        old.replace_all_uses_with(identity.outputs[0], replace_graph_outputs=True)
        return
    old.name = f"{name}__replaced"
    new.name = name
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def fresh_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2`, ...: a value name not yet used in the graph."""
    taken = set(graph.initializers) | {v.name for v in graph.inputs}
    taken |= {v.name for n in graph for v in n.outputs}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def new_value(graph: ir.Graph, base: str, like: ir.Value | None = None) -> ir.Value:
    """A fresh (unproduced) value with a unique name, typed and shaped like `like`."""
    return ir.Value(name=fresh_name(graph, base), type=like.type if like is not None else None,
                    shape=like.shape if like is not None else None)
