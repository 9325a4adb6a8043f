"""The one shape layer: input dims, fixing them, refreshing recorded shapes, every value's shape.

    resolve_input_shapes(model, overrides, data)  concrete dims of every input
    fix_input_shapes(model, shapes)               a copy with those dims, every recorded shape re-inferred
    refresh_shapes(model)                         after a pass: no stale value_info / output dims
    infer_value_shapes(model, shapes, feeds)      (elem type, dims) of every value, subgraphs included
    light_copy(model)                             the graph without its large weights, for onnx's tools
"""

from edgeopt.graph.shapes.fix import fix_input_shapes, refresh_shapes
from edgeopt.graph.shapes.infer import ValueShapes, infer_value_shapes
from edgeopt.graph.shapes.inputs import (batch_axes, data_dims, graph_inputs, output_batch_axes, parse_shape_spec,
                                         resolve_input_shapes)
from edgeopt.graph.shapes.light import LIGHT_LIMIT, light_copy

__all__ = ["parse_shape_spec", "graph_inputs", "batch_axes", "output_batch_axes", "resolve_input_shapes", "data_dims", "fix_input_shapes",
           "refresh_shapes", "infer_value_shapes", "ValueShapes", "light_copy", "LIGHT_LIMIT"]
