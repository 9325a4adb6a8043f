"""Odd but equivalent versions of a model, to test that passes and tools cope with them.

Each function returns a new model and leaves its argument untouched; the new
model computes the same outputs as the original.
"""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from edgeopt.errors import UserError


def weights_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node (named `const.<name>`) with the same output name.

    Subgraphs (If / Loop / Scan bodies) are converted too. Initializers that
    are also listed as graph inputs (IR < 4 style, overridable at run time)
    stay initializers, since a Constant could not be overridden.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph_weights_as_constants(out.graph)
    return out


def _graph_weights_as_constants(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _graph_weights_as_constants(attr.g)
            for g in attr.graphs:
                _graph_weights_as_constants(g)
    overridable = {i.name for i in graph.input}
    keep, constants = [], []
    for init in graph.initializer:
        if init.name in overridable:
            keep.append(init)
        else:
            constants.append(helper.make_node("Constant", [], [init.name], name=f"const.{init.name}", value=init))
    nodes = constants + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(nodes)


def to_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert the default-domain opset with onnx's version converter, checking the result.

    Raises UserError when the converter has no adapter for an operator or
    produces a model that does not pass onnx.checker.
    """
    current = _default_opset(model)
    latest = onnx.defs.onnx_opset_version()
    if not 1 <= version <= latest:
        raise UserError(f"to_opset: opset {version} does not exist; this onnx knows 1..{latest}")
    if version == current:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    try:
        out = version_converter.convert_version(model, version)
        # the converter keeps the IR version, which may predate the new opset
        needed = helper.find_min_ir_version_for(out.opset_import, ignore_unknown=True)
        out.ir_version = max(out.ir_version, needed)
        onnx.checker.check_model(out)
    except Exception as exc:  # the converter raises bare RuntimeError / ValidationError
        raise UserError(
            f"to_opset: cannot convert model '{model.graph.name}' from opset {current} to {version}: "
            f"{_converter_reason(exc)}. Pick another opset, or build the model at opset {version} "
            f"(the zoo builders take opset=)."
        ) from exc
    return out


def _converter_reason(exc: Exception) -> str:
    """The converter's message without its C++ file / assertion prefix."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.split("failed: ", 1)[-1].rstrip(".")


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise UserError(f"to_opset: model '{model.graph.name}' imports no default-domain opset")


def fix_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    """Make the batch dimension static: the symbolic dim 0 of the inputs becomes n everywhere.

    The symbols found on dim 0 of the graph inputs are replaced by n in the
    inputs, outputs and value_info. An input whose batch is already static
    must already be n.
    """
    if n < 1:
        raise UserError(f"fix_batch: batch size must be >= 1, got {n}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name for i in graph.initializer}
    symbols = set()
    for vi in graph.input:
        if vi.name in initializers or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        if dims[0].HasField("dim_param"):
            symbols.add(dims[0].dim_param)
        elif dims[0].HasField("dim_value") and dims[0].dim_value != n:
            raise UserError(
                f"fix_batch: input '{vi.name}' already has a static batch of {dims[0].dim_value}, not {n}"
            )
        else:
            dims[0].dim_value = n  # unknown dim (neither value nor param)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                dim.dim_value = n  # setting the value clears the param (oneof)
    return out
