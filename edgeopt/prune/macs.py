"""MACs of the MAC layers (Conv, Gemm, MatMul), counted as the profiler counts them.

Conv: N x Cout x prod(out spatial) x (Cin / group) x prod(kernel);
ConvTranspose: N x Cin x prod(in spatial) x (Cout / group) x prod(kernel); Gemm:
M x N x K; MatMul: prod(output) x K. A pass may not import the profiler, so
pruning counts what it saves here; tests check both agree.
"""

from __future__ import annotations

import math

import onnx
from onnx import numpy_helper

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
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        y = shapes.get(node.output[0])
        if y is None or any(d is None for d in y):
            continue
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w is None or any(d is None for d in w):
                continue
            out[node.output[0]] = int(math.prod(y) * w[1] * math.prod(w[2:]))
        elif node.op_type == "ConvTranspose":
            w, x = shapes.get(node.input[1]), shapes.get(node.input[0])
            if w is None or x is None or any(d is None for d in list(w) + list(x)):
                continue
            out[node.output[0]] = int(math.prod(x) * w[1] * math.prod(w[2:]))
        elif node.op_type == "Gemm":
            a = shapes.get(node.input[0])
            if a is None or a[0 if _attr(node, "transA", 0) else -1] is None:
                continue
            k = a[0] if _attr(node, "transA", 0) else a[-1]
            out[node.output[0]] = int(math.prod(y) * k)
        else:
            a = shapes.get(node.input[0])
            if a is None or a[-1] is None:
                continue
            out[node.output[0]] = int(math.prod(y) * a[-1])
    return out


def total_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    return sum(node_macs(model, input_shapes).values())
