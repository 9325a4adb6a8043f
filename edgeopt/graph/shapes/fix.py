"""Fixing input dims, and refreshing every recorded shape so none is stale.

A shape recorded in a model (value_info, a graph output's dims) was true for
the inputs and graph it was inferred on. After input dims change or a pass
rewrites the graph it may be wrong, and onnx's strict checker rejects a model
whose recorded dims disagree with what it infers (Paddle exports carry -1
dims). So both operations clear every recorded shape and infer them again.
"""

from __future__ import annotations

import onnx

from edgeopt.graph.shapes.light import light_copy, set_dims


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int | None]]) -> onnx.ModelProto:
    """A copy of the model whose inputs have the given dims (None: left as they are), with every
    value_info and output dim cleared and re-inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in shapes and vi.type.HasField("tensor_type"):
            set_dims(vi, shapes[vi.name])
    return refresh_shapes(fixed)


def refresh_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop every value_info (subgraphs too) and the outputs' dims, then infer them again (in place).

    Outputs keep their element type and rank; each dim gets the inferred value, else the symbolic
    name it had, else stays unknown (a recorded -1 or a stale size is dropped). Top-level value_info is written back from the inference. A model onnx
    cannot infer is left with the shapes cleared (the checker says why later).
    """
    clear_shapes(model.graph)
    before = [onnx.ValueInfoProto() for _ in model.graph.output]
    for old, out in zip(before, model.graph.output):
        old.CopyFrom(out)
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - onnx raises several types; the checker reports it properly
        for old, out in zip(before, model.graph.output):
            out.CopyFrom(old)
        return model
    model.graph.value_info.extend(inferred.graph.value_info)
    for old, out, new in zip(before, model.graph.output, inferred.graph.output):
        if not out.type.HasField("tensor_type"):
            continue
        tt, new_tt = out.type.tensor_type, new.type.tensor_type
        if not tt.elem_type:
            tt.elem_type = new_tt.elem_type
        old_tt = old.type.tensor_type
        if new_tt.HasField("shape"):
            tt.shape.CopyFrom(new_tt.shape)
        elif old_tt.HasField("shape"):  # not inferred: keep the rank, drop the recorded sizes
            for _ in old_tt.shape.dim:
                tt.shape.dim.add()
        if len(old_tt.shape.dim) == len(tt.shape.dim):
            for d, was in zip(tt.shape.dim, old_tt.shape.dim):
                if not d.HasField("dim_value") and was.dim_param:
                    d.dim_param = was.dim_param
    return model


def clear_shapes(graph: onnx.GraphProto, subgraph: bool = False) -> None:
    """Remove value_info from a graph and every subgraph in it, and the subgraphs' output dims
    (their element types stay)."""
    del graph.value_info[:]
    if subgraph:
        for out in graph.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                clear_shapes(g, subgraph=True)
