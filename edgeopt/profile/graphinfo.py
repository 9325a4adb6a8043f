"""One pass of facts over a model: tensor shapes and types, producers / consumers, constants.

Shape inference runs once, on a *shallow* copy of the graph: nodes, inputs
with the resolved static shapes, and only the small integer initializers
(shape arguments that inference needs as values). Large weights are declared
as typed inputs instead of being copied, so ResNet-50's 100 MB stay where
they are. The input model is never modified.

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

from edgeopt.errors import UserError
from edgeopt.graph.shapes import graph_inputs, resolve_input_shapes

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
_SMALL_INIT = 4096  # integer initializers up to this many elements go into shape inference with values
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


def _shallow_model(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A model with the same nodes, static inputs and no large weight data (for shape inference)."""
    shallow = onnx.ModelProto()
    shallow.ir_version = max(model.ir_version, 4)
    shallow.opset_import.extend(model.opset_import)
    shallow.functions.extend(model.functions)
    g = shallow.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    input_names = set()
    for vi in model.graph.input:
        new = g.input.add()
        new.CopyFrom(vi)
        input_names.add(vi.name)
        if vi.name in shapes:
            new.type.tensor_type.shape.ClearField("dim")
            for d in shapes[vi.name]:
                new.type.tensor_type.shape.dim.add().dim_value = d
    g.output.extend(model.graph.output)
    for init in model.graph.initializer:
        numel = math.prod(init.dims)
        if init.data_type in INDEX_TYPES and numel <= _SMALL_INIT and init.data_location != TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in input_names:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            # IR < 4: the initializer is also listed as an input; give it its real shape
            for vi in g.input:
                if vi.name == init.name:
                    vi.CopyFrom(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for sparse in model.graph.sparse_initializer:
        name = sparse.values.name
        if name not in input_names:
            g.input.append(onnx.helper.make_tensor_value_info(name, sparse.values.data_type, list(sparse.dims)))
    return shallow


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    if not vi.type.HasField("tensor_type"):
        return TensorInfo(vi.name)
    tt = vi.type.tensor_type
    elem = tt.elem_type or None
    if not tt.HasField("shape"):
        return TensorInfo(vi.name, elem, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(d.dim_value)
        else:
            return TensorInfo(vi.name, elem, None)
    return TensorInfo(vi.name, elem, dims)


def analyze(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> GraphInfo:
    """Shapes, types, producers, consumers and constants of every tensor (shape inference once)."""
    shapes = resolve_input_shapes(model, input_shapes)
    shallow = _shallow_model(model, shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(shallow, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception as exc:  # onnx raises several types; a model it cannot infer is bad input
        raise UserError(f"shape inference failed: {str(exc).splitlines()[0][:200]}; "
                        "is the model valid (onnx.checker) and are --input-shape values right?") from None
    g = inferred.graph
    tensors: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        info = _tensor_info(vi)
        old = tensors.get(vi.name)
        if old is None or (old.shape is None and info.shape is not None):
            tensors[vi.name] = info
    initializers = {init.name: init for init in model.graph.initializer}
    for name, init in initializers.items():
        tensors[name] = TensorInfo(name, init.data_type, list(init.dims))
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type == "Constant" and node.output:
            tensor = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                          None)
            if tensor is not None:
                tensors[node.output[0]] = TensorInfo(node.output[0], tensor.data_type, list(tensor.dims))

    info = GraphInfo(model=model, input_shapes=shapes, nodes=nodes, tensors=tensors, initializers=initializers)
    info.graph_outputs = {o.name for o in model.graph.output}
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
