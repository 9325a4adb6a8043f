"""One pass of facts over a model: tensor shapes and types, producers / consumers, constants.

Shapes come from the shape layer (edgeopt.graph.shapes.infer_value_shapes):
onnx inference on a light copy, then symbolic inference and one onnxruntime
run only for what stays unknown. The input model is never modified.

Constant tensors are initializers, Constant outputs, shapes of tensors whose
shape is static, and outputs of nodes whose every input is constant. Nodes
that compute only constants ("weight decode" subgraphs: DequantizeLinear of
int8 weights, Cast of fp16 weights, Gather of a codebook, ...) are weight
storage, not compute: the profiler folds them into the layer that consumes
their result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from edgeopt.graph.shapes import graph_inputs, infer_value_shapes, resolve_input_shapes
from edgeopt.graph.shapes.run import observed_conditions

# onnx element type -> bytes per element (sub-byte types as fractions)
_ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16,
}
for _name, _size in (("INT4", 0.5), ("UINT4", 0.5), ("FLOAT8E4M3FN", 1), ("FLOAT8E4M3FNUZ", 1),
                     ("FLOAT8E5M2", 1), ("FLOAT8E5M2FNUZ", 1), ("FLOAT4E2M1", 0.5)):
    if hasattr(TensorProto, _name):
        _ITEMSIZE[getattr(TensorProto, _name)] = _size

# onnx element type -> compute precision name used by device profiles
_PRECISION = {TensorProto.FLOAT: "fp32", TensorProto.DOUBLE: "fp32", TensorProto.FLOAT16: "fp16",
              TensorProto.BFLOAT16: "fp16", TensorProto.INT8: "int8", TensorProto.UINT8: "int8",
              TensorProto.INT16: "fp16"}
for _name in ("INT4", "UINT4", "FLOAT4E2M1"):
    if hasattr(TensorProto, _name):
        _PRECISION[getattr(TensorProto, _name)] = "int4"
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
    if hasattr(TensorProto, _name):
        _PRECISION[getattr(TensorProto, _name)] = "int8"

INDEX_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL, TensorProto.UINT64}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def dtype_name(elem_type: int | None) -> str:
    if elem_type is None:
        return "unknown"
    return TensorProto.DataType.Name(elem_type).lower()


def itemsize(elem_type: int | None) -> float | None:
    return _ITEMSIZE.get(elem_type)


def precision_of(elem_type: int | None) -> str | None:
    return _PRECISION.get(elem_type)


def storage_bytes(elem_type: int | None, numel: int) -> int | None:
    """Bytes a tensor takes when stored: packed for 4-bit types (ceil(n / 2))."""
    size = itemsize(elem_type)
    if size is None:
        return None
    if size < 1:
        return math.ceil(numel * size)
    return int(numel * size)


@dataclass
class TensorInfo:
    name: str
    elem_type: int | None = None
    shape: list[int] | None = None  # None when any dim is unknown

    @property
    def numel(self) -> int | None:
        if self.shape is None:
            return None
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        n = self.numel
        return None if n is None else storage_bytes(self.elem_type, n)


@dataclass
class GraphInfo:
    model: onnx.ModelProto
    input_shapes: dict[str, list[int]]
    nodes: list[onnx.NodeProto]
    tensors: dict[str, TensorInfo]
    initializers: dict[str, onnx.TensorProto]
    const: set[str] = field(default_factory=set)  # constant tensor names
    const_nodes: set[int] = field(default_factory=set)  # indices of nodes that compute only constants
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    graph_outputs: set[str] = field(default_factory=set)
    graph_input_names: list[str] = field(default_factory=list)
    observed: dict[str, bool] = field(default_factory=dict)  # If conditions on the run's real inputs

    def info(self, name: str) -> TensorInfo | None:
        if not name:
            return None
        return self.tensors.get(name)

    def const_roots(self, name: str) -> tuple[set[str], set[str]]:
        """Initializers (and Constant outputs) a constant tensor is computed from, and the op
        types of the decode nodes on the way."""
        memo = self._roots_memo
        if name in memo:
            return memo[name]
        roots: set[str] = set()
        ops: set[str] = set()
        idx = self.producer.get(name)
        if idx is None or self.nodes[idx].op_type == "Constant":
            roots.add(name)
        else:
            node = self.nodes[idx]
            ops.add(node.op_type)
            for inp in node.input:
                if inp and inp in self.const:
                    r, o = self.const_roots(inp)
                    roots |= r
                    ops |= o
        memo[name] = (roots, ops)
        return roots, ops

    def __post_init__(self):
        self._roots_memo: dict = {}


def analyze(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
            feeds: dict | None = None) -> GraphInfo:
    """Shapes, types, producers, consumers and constants of every tensor (the shape layer, once).

    `tensors` also holds the values inside If / Loop / Scan bodies (names are unique in a model).
    `feeds` (the run's real inputs) serve the onnxruntime step of shape inference when static
    inference leaves values unknown.
    """
    shapes = resolve_input_shapes(model, input_shapes)
    values = infer_value_shapes(model, shapes, feeds)
    tensors = {name: TensorInfo(name, elem, shape) for name, (elem, shape) in values.items()}
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = list(model.graph.node)

    info = GraphInfo(model=model, input_shapes=shapes, nodes=nodes, tensors=tensors, initializers=initializers)
    info.graph_outputs = {o.name for o in model.graph.output}
    info.observed = observed_conditions(model, shapes, feeds)
    info.graph_input_names = [vi.name for vi in graph_inputs(model)]
    overridable = set(info.graph_input_names)
    const = {name for name in initializers if name not in overridable}
    const |= {s.values.name for s in model.graph.sparse_initializer}
    for idx, node in enumerate(nodes):
        for out in node.output:
            if out:
                info.producer[out] = idx
        for inp in node.input:
            if inp:
                info.consumers.setdefault(inp, []).append(idx)
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        real_inputs = [i for i in node.input if i]
        is_const = False
        if node.op_type == "Constant":
            is_const = True
        elif node.op_type == "Shape" and real_inputs:
            src = tensors.get(real_inputs[0])
            is_const = src is not None and src.shape is not None
        elif real_inputs and not has_subgraph and node.op_type not in _NONDETERMINISTIC and node.domain in ("", "ai.onnx"):
            is_const = all(i in const for i in real_inputs)
        if is_const:
            info.const_nodes.add(idx)
            const.update(o for o in node.output if o)
    info.const = const
    return info
