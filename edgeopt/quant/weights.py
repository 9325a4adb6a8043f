"""Finding the weight tensors a quantization pass may replace, and why others are skipped.

For each supported op the table says which input holds the weight, which
axis is the output channel (per-channel scales / codebooks) and which axis
is the reduction axis that blocks run along (block-wise scales).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.graph.edit import const_array
from edgeopt.pass_types import NodeNote
from edgeopt.quant.select import excluded, node_label

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", *RECURRENT_OPS)


@dataclass
class WeightSlot:
    """One weight tensor and the nodes that read it."""

    value: ir.Value
    array: np.ndarray
    nodes: list[ir.Node]
    channel_axis: int  # output channels (per-channel granularity)
    block_axis: int  # the reduction axis blocks run along, in block_shape
    block_shape: tuple[int, ...]  # the layout block-wise storage uses (Conv: [O, I*kh*kw])

    @property
    def name(self) -> str:
        return self.value.name or "?"


def _roles(node: ir.Node) -> list[tuple[str, int, int, int, bool]] | str:
    """Per weight input: (name, input index, channel axis, block axis, flatten-to-2D), or why the node has
    no quantizable weight."""
    op = node.op_type
    if op == "Conv":
        return [("W", 1, 0, 1, True)]
    if op == "ConvTranspose":
        return [("W", 1, 1, 0, False)]
    if op == "Gemm":
        trans_b = node.attributes.get_int("transB", 0)
        return [("W", 1, 0, 1, False) if trans_b else ("W", 1, 1, 0, False)]
    if op == "MatMul":
        if const_array(node.inputs[1]) is not None:
            return [("W", 1, -1, -2, False)]
        if const_array(node.inputs[0]) is not None:
            return [("W", 0, -2, -1, False)]
        return "neither MatMul input is a constant"
    if op == "Gather":
        return [("W", 0, 0, 1, False)]
    if op in RECURRENT_OPS:
        # W [directions, gates*hidden, input] and R [directions, gates*hidden, hidden]: a channel is one
        # gate row, reduced along the last axis (B, the biases, stays float: it is small)
        return [("W", 1, -2, -1, False), ("R", 2, -2, -1, False)]
    return f"{op} has no weight this pass handles"


def _subgraphs(node: ir.Node):
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def subgraph_notes(graph: ir.Graph) -> list[NodeNote]:
    """A skip note for each weight op inside an If / Loop / Scan body: the passes rewrite the main graph only."""
    notes = []
    for node in graph:
        for sub in _subgraphs(node):
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                if inner.op_type in WEIGHT_OPS and inner.domain in ("", "ai.onnx"):
                    notes.append(NodeNote(node_label(inner), inner.op_type, "skipped",
                                          f"inside a subgraph of {node.op_type} {node_label(node)}: "
                                          "subgraphs stay float32"))
    return notes


def _unusable(label: str, value: ir.Value | None, array: np.ndarray | None,
              min_elements: int) -> tuple[str, dict | None] | None:
    """Why this weight input is left alone (and figures), or None."""
    if value is None or array is None:
        return f"{label} is not a constant initializer", None
    if value.is_graph_input():
        return f"{label} is also a graph input and may be fed at run time", None
    if array.dtype != np.float32:
        return f"{label} is {array.dtype}, only float32 weights are quantized", None
    if array.ndim == 0:
        return f"{label} is a scalar", None
    if array.size < min_elements:
        return (f"{label} has {array.size} elements < min_elements {min_elements}; small tensors stay float",
                {"elements": int(array.size)})
    return None


def find_weights(graph: ir.Graph, op_types: list[str], exclude: list[str],
                 min_elements: int) -> tuple[list[WeightSlot], list[NodeNote]]:
    """The weights to quantize (one slot per tensor, however many nodes read it) and the skip notes."""
    notes: list[NodeNote] = subgraph_notes(graph)
    slots: dict[int, WeightSlot] = {}
    order: list[int] = []
    for node in graph:
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = node_label(node)
        if node.op_type not in op_types:
            notes.append(NodeNote(name, node.op_type, "skipped", f"{node.op_type} is not in op_types"))
            continue
        pattern = excluded(name, node.op_type, exclude)
        if pattern:
            notes.append(NodeNote(name, node.op_type, "skipped", f"excluded by {pattern!r}"))
            continue
        roles = _roles(node)
        if isinstance(roles, str):
            notes.append(NodeNote(name, node.op_type, "skipped", roles))
            continue
        for label, index, channel_axis, block_axis, flatten in roles:
            value = node.inputs[index] if index < len(node.inputs) else None
            array = const_array(value)
            why = _unusable(label, value, array, min_elements)
            if why:
                notes.append(NodeNote(name, node.op_type, "skipped", why[0], why[1] or {}))
                continue
            key = id(value)
            if key not in slots:
                shape = (array.shape[0], int(np.prod(array.shape[1:]))) if flatten and array.ndim > 2 else array.shape
                ch = channel_axis % array.ndim
                blk = block_axis % len(shape) if len(shape) > 1 else 0
                slots[key] = WeightSlot(value, array, [], ch, blk, tuple(int(d) for d in shape))
                order.append(key)
            slots[key].nodes.append(node)
    result = []
    for key in order:
        slot = slots[key]
        readers = [use.node for use in slot.value.uses()]
        others = [n for n in readers if all(n is not m for m in slot.nodes)]
        if others or slot.value.is_graph_output():
            who = f"{node_label(others[0])} ({others[0].op_type})" if others else "a graph output"
            for node in slot.nodes:
                notes.append(NodeNote(node_label(node), node.op_type, "skipped",
                                      f"W is also read by {who}, which is not quantized"))
            continue
        result.append(slot)
    return result, notes


def find_biases(graph: ir.Graph, op_types: list[str], exclude: list[str]):
    """(value, readers, array) of each constant float32 bias of Conv / ConvTranspose / Gemm whose readers
    are all such nodes (and not excluded)."""
    seen: dict[int, tuple] = {}
    for node in graph:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or node.op_type not in op_types:
            continue
        if len(node.inputs) < 3 or node.inputs[2] is None or excluded(node_label(node), node.op_type, exclude):
            continue
        value = node.inputs[2]
        array = const_array(value)
        if array is None or array.dtype != np.float32 or value.is_graph_input() or value.is_graph_output():
            continue
        seen.setdefault(id(value), (value, array))
    out = []
    for value, array in seen.values():
        readers = [use.node for use in value.uses()]
        if all(r.op_type in ("Conv", "ConvTranspose", "Gemm") and len(r.inputs) > 2 and r.inputs[2] is value
               and not excluded(node_label(r), r.op_type, exclude) for r in readers):
            out.append((value, readers, array))
    return out
