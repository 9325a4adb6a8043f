"""MACs of the MAC layers (Conv, ConvTranspose, Gemm, MatMul) of a whole model.

A pass may not import the profiler, so pruning counts what it saves here; the
per-layer rule is edgeopt.graph.macs.layer_macs, the one the profiler uses.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from edgeopt.graph.macs import layer_macs
from edgeopt.prune.groups import static_shapes


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """MACs per MAC node, keyed by its first output's name (nodes with unknown shapes are left out)."""
    shapes = static_shapes(model, input_shapes)
    for init in model.graph.initializer:
        shapes.setdefault(init.name, list(init.dims))
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None:
                shapes.setdefault(node.output[0], list(numpy_helper.to_array(value).shape))
    out: dict[str, int] = {}
    for node in model.graph.node:
        kind = node.op_type
        if kind not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        x, w, y = (shapes.get(node.input[0]), shapes.get(node.input[1]) if kind.startswith("Conv") else [],
                   shapes.get(node.output[0]))
        if any(s is None or any(d is None for d in s) for s in (x, w, y)):
            continue  # a shape the inference left unknown: not counted, as the profiler reports it
        out[node.output[0]] = int(layer_macs(kind, x, w, y, trans_a=bool(_attr(node, "transA", 0))))
    return out


def total_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    return sum(node_macs(model, input_shapes).values())
