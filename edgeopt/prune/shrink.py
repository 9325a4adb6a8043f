"""Physically remove channels: cut every constant that touches them, fix group counts and reshapes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array
from edgeopt.prune.groups import GraphAnalysis


def shrink(model: ir.Model, analysis: GraphAnalysis, keep: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep, in every group id of `keep`, only the given channel indices (in place on `model`).

    Returns the surviving positions along the channel axis of every tensor
    that lost channels (by tensor name), which reconstruction needs.
    """
    graph = model.graph
    positions: dict[str, np.ndarray] = {}

    def pos(name: str) -> np.ndarray:
        if name not in positions:
            positions[name] = analysis.positions(name, keep)
        return positions[name]

    cuts: dict[tuple[int, int], tuple[ir.Node, int, dict[int, np.ndarray]]] = {}
    for item in analysis.slices:
        value = item.node.inputs[item.index]
        arr = const_array(value)
        kept = pos(item.value)
        if arr is None or len(kept) == arr.shape[item.axis]:
            continue
        entry = cuts.setdefault((id(item.node), item.index), (item.node, item.index, {}))
        entry[2][item.axis] = kept

    made: dict[tuple, ir.Value] = {}
    for node, index, by_axis in cuts.values():
        value = node.inputs[index]
        key = (value.name,) + tuple((axis, by_axis[axis].tobytes()) for axis in sorted(by_axis))
        if key not in made:
            arr = const_array(value)
            for axis in sorted(by_axis):
                arr = np.take(arr, by_axis[axis], axis=axis)
            made[key] = add_initializer(graph, f"{value.name}_pruned", np.ascontiguousarray(arr))
        node.replace_input_with(index, made[key])

    for node, x in analysis.depthwise:
        n = len(pos(x))
        if n != int(node.attributes["group"].value):
            node.attributes["group"] = ir.AttrInt64("group", n)

    for node, dim, out in analysis.reshapes:
        target = const_array(node.inputs[1]).astype(np.int64).copy()
        if target[dim] != len(pos(out)):
            target[dim] = len(pos(out))
            node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_pruned", target))

    changed = {}
    for name, info in analysis.info.items():
        kept = pos(name)
        if len(kept) != info.channels * info.inner:
            changed[name] = kept
    for node in graph:
        for out in node.outputs:
            if out.name in changed:
                out.shape = None  # re-inferred downstream; the old dims are stale
    return changed
