"""The shape and element type of every value in a model, subgraph values included.

Three steps, each only for what the previous ones left unknown:
  1. onnx shape inference with data propagation on the light copy (folds
     Shape -> Gather -> Concat -> Reshape chains over static dims);
  2. onnxruntime's symbolic shape inference (knows more ops and arithmetic on
     dims; it throws on some graphs, so it is optional);
  3. one onnxruntime run with every still-unknown top-level value added as a
     graph output, recording its real shape (a NonZero count, a data-dependent
     Resize); then onnx inference again with every known shape written into
     value_info, so If / Loop bodies that read outer values get shapes too.
When step 1 resolves everything (a plain CNN), nothing else runs.
ONNX value names are unique across a model, so the result is keyed by name.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import onnx
from onnx import helper

from edgeopt.errors import UserError
from edgeopt.graph.shapes.fix import clear_shapes
from edgeopt.graph.shapes.light import light_copy
from onnx import numpy_helper

from edgeopt.graph.shapes.run import branch_model, run_values, shapes_of

Shape = list[int] | None
ValueShapes = dict[str, tuple[int | None, Shape]]  # name -> (onnx elem type or None, dims or None)


def infer_value_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]],
                       feeds: dict[str, np.ndarray] | None = None) -> ValueShapes:
    """(elem type, static dims) of every value: inputs, initializers, node outputs, subgraph values.

    `input_shapes` must give every graph input (resolve_input_shapes). `feeds`, if given, are
    what the onnxruntime step runs on (sliced to input_shapes); else seeded random inputs.
    Raises UserError when onnx cannot infer the model at all.
    """
    light = light_copy(model, input_shapes=input_shapes)
    _clear_outputs(light)
    try:
        inferred = _onnx_infer(light)
    except Exception as exc:  # onnx raises several types; a model it cannot infer is bad input
        raise UserError(f"shape inference failed: {str(exc).splitlines()[0][:200]}; "
                        "is the model valid (onnx.checker) and are --input-shape values right?") from None
    values = collect(inferred.graph)
    produced = node_outputs(model.graph)
    if all(values.get(n, (None, None))[1] is not None for n in produced):
        return values

    _merge(values, _symbolic(light))
    unknown = {n for n in produced if values.get(n, (None, None))[1] is None}
    top = [n for n in node_outputs(model.graph, recurse=False) if n in unknown]
    branches = [(node, g) for node in model.graph.node if node.op_type == "If" for g in subgraphs(node)
                if unknown & set(node_outputs(g))]
    outer = sorted({n for _, g in branches for n in outer_reads(g)})
    if top or branches:
        arrays = run_values(model, input_shapes, top + outer, feeds)
        _merge(values, shapes_of(arrays))
        _run_branches(model, branches, arrays, input_shapes, feeds, values)
    if any(values.get(n, (None, None))[1] is None for n in produced):
        _write_value_info(light, values)
        try:
            _merge(values, collect(_onnx_infer(light).graph))
        except Exception:  # noqa: BLE001 - the first inference succeeded; keep what we have
            pass
    return values


def _run_branches(model, branches, arrays, input_shapes, feeds, values: ValueShapes) -> None:
    """Run each top-level If branch that has unknown values on its own, on the outer values the
    main run recorded (the branch not taken may fail on them: its values stay unknown)."""
    known = dict(arrays)
    known.update({k: np.asarray(v) for k, v in (feeds or {}).items() if k in input_shapes
                  and list(np.shape(v)) == list(input_shapes[k])})
    inits = {t.name: t for t in model.graph.initializer}
    for _, branch in branches:
        outer = {}
        for name in outer_reads(branch):
            if name in known:
                outer[name] = known[name]
            elif name in inits:
                outer[name] = numpy_helper.to_array(inits[name])
        if len(outer) < len(outer_reads(branch)):
            continue
        wanted = [n for n in node_outputs(branch, recurse=False) if values.get(n, (None, None))[1] is None]
        sub = branch_model(model, branch, outer)
        _merge(values, shapes_of(run_values(sub, {k: list(a.shape) for k, a in outer.items()}, wanted, outer)))


def outer_reads(graph: onnx.GraphProto) -> list[str]:
    """Values a subgraph (and the subgraphs in it) reads from outside itself."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    reads = []
    for node in graph.node:
        reads.extend(i for i in node.input if i and i not in local)
        for sub in subgraphs(node):
            reads.extend(i for i in outer_reads(sub) if i not in local)
    reads.extend(o.name for o in graph.output if o.name not in local)
    return list(dict.fromkeys(reads))


def _onnx_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)


def _clear_outputs(light: onnx.ModelProto) -> None:
    """Recorded shapes may be stale (a pass, changed input dims): infer them all afresh."""
    clear_shapes(light.graph)
    for out in light.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")


def _symbolic(light: onnx.ModelProto) -> ValueShapes:
    """onnxruntime's symbolic shape inference, or nothing when it fails on this graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception:  # noqa: BLE001 - an onnxruntime build without its tools (or without sympy)
        return {}
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        # SymbolicShapeInference.infer_shapes' own steps: it raises when some shape stays unknown (and
        # saves a file in the working directory first), where the partial result is what we want.
        with contextlib.redirect_stdout(io.StringIO()):
            sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
            sym._preprocess(light)
            while sym.run_:
                sym._infer_impl()
            sym._update_output_from_vi()
            out = sym.out_mp_
    except Exception:  # noqa: BLE001 - it throws on ops and patterns it does not support
        return {}
    finally:
        logger.setLevel(level)
    return collect(out.graph) if out is not None else {}


def _merge(values: ValueShapes, more: ValueShapes) -> None:
    """Fill what `values` does not know yet from `more` (known shapes are never replaced)."""
    for name, (elem, shape) in more.items():
        old_elem, old_shape = values.get(name, (None, None))
        if old_shape is None and shape is not None:
            values[name] = (old_elem or elem, shape)
        elif old_elem is None and elem is not None:
            values[name] = (elem, old_shape)


def _write_value_info(light: onnx.ModelProto, values: ValueShapes) -> None:
    """Every known top-level value's shape as value_info, so inference inside subgraphs sees it."""
    g = light.graph
    skip = {vi.name for vi in g.input} | {vi.name for vi in g.output} | {t.name for t in g.initializer}
    del g.value_info[:]
    for name in node_outputs(g, recurse=False):
        elem, shape = values.get(name, (None, None))
        if name not in skip and elem and shape is not None:
            g.value_info.append(helper.make_tensor_value_info(name, elem, shape))


def collect(graph: onnx.GraphProto, out: ValueShapes | None = None) -> ValueShapes:
    """(elem type, dims) of every value a graph and its subgraphs record (dims None if any is unknown)."""
    out = {} if out is None else out
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        elem, shape = _from_value_info(vi)
        old = out.get(vi.name)
        if old is None or (old[1] is None and shape is not None):
            out[vi.name] = (elem or (old[0] if old else None), shape)
    for init in graph.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            tensor = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                          None)
            if tensor is not None:
                out[node.output[0]] = (tensor.data_type, list(tensor.dims))
        for sub in subgraphs(node):
            collect(sub, out)
    return out


def _from_value_info(vi: onnx.ValueInfoProto) -> tuple[int | None, Shape]:
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type or None, None
    dims = []
    for d in tt.shape.dim:
        if not (d.HasField("dim_value") and d.dim_value >= 0):
            return tt.elem_type or None, None
        dims.append(d.dim_value)
    return tt.elem_type or None, dims


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            graphs.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(a.graphs)
    return graphs


def node_outputs(graph: onnx.GraphProto, recurse: bool = True) -> list[str]:
    """Names of the values nodes produce (in subgraphs too, unless recurse is False)."""
    names = []
    for node in graph.node:
        names.extend(o for o in node.output if o)
        if recurse:
            for sub in subgraphs(node):
                names.extend(node_outputs(sub))
    return names
