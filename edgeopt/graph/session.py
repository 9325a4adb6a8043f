"""An onnxruntime session for an in-memory model of any size.

Under 2 GiB the model goes to onnxruntime as bytes. Over it, protobuf cannot serialize the model:
it is written with external data to a temporary folder and loaded from the path. Measured on 3 GiB
of MatMul weights, this peaks 4.1 GB above the model; add_external_initializers (numpy copies that
onnxruntime copies again) peaks 7.3 GB above it.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from edgeopt.graph.io import needs_external_data, save_model


_FLOAT16 = onnx.TensorProto.FLOAT16
_INT64, _BOOL, _FLOAT, _UINT8 = (onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT,
                                 onnx.TensorProto.UINT8)

# Operators whose (first) output has the type of their first input: what the type walk below follows.
_SAME_AS_FIRST = frozenset("""
    Abs Acos Acosh Add AffineGrid Asin Asinh Atan Atanh AveragePool BatchNormalization BitShift Ceil Celu Clip
    Col2Im Compress Concat Conv ConvTranspose Cos Cosh CumSum DepthToSpace Det Div Dropout Einsum Elu Erf Exp
    Expand Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool GridSample GroupNormalization HardSigmoid HardSwish Hardmax Identity InstanceNormalization
    LRN LSTM LayerNormalization LeakyRelu Log LogSoftmax LpNormalization LpPool MatMul Max MaxPool MaxRoiPool
    MaxUnpool Mean MeanVarianceNormalization Min Mish Mod Mul Neg Pad Pow PRelu RNN Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
    Relu Reshape Resize ReverseSequence RoiAlign Round STFT ScatterElements ScatterND Selu Shrink Sigmoid Sign
    Sin Sinh Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Upsample
""".split())
_DTYPE_ATTR = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                         "Bernoulli"})
_INT64_OUT = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression"})
_BOOL_OUT = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                       "IsNaN", "IsInf"})


def _output_type(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The element type of node's first output, or None when the walk cannot tell."""
    if node.domain not in ("", "ai.onnx"):
        return None
    op, attrs = node.op_type, {a.name: a for a in node.attribute}
    first = types.get(node.input[0]) if node.input and node.input[0] else None
    if op == "Cast":
        return attrs["to"].i if "to" in attrs else None
    if op == "CastLike":
        return types.get(node.input[1]) if len(node.input) > 1 else None
    if op in ("Constant", "ConstantOfShape"):
        if "value" in attrs:
            return attrs["value"].t.data_type
        if op == "ConstantOfShape" or {"value_float", "value_floats"} & attrs.keys():
            return _FLOAT
        return _INT64 if {"value_int", "value_ints"} & attrs.keys() else None
    if op in _DTYPE_ATTR and "dtype" in attrs:
        return attrs["dtype"].i
    if op in _INT64_OUT:
        return _INT64
    if op in _BOOL_OUT:
        return _BOOL
    if op == "Where":
        return types.get(node.input[1]) if len(node.input) > 1 else None
    if op == "DequantizeLinear":  # the scale's type
        return types.get(node.input[1]) if len(node.input) > 1 else None
    if op == "QuantizeLinear":  # the zero point's type, uint8 without one
        return types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else _UINT8
    return first if op in _SAME_AS_FIRST else None


def _graph_types(graph: onnx.GraphProto, outer: dict[str, int]) -> dict[str, int]:
    """Element type per value name: declared ones (inputs, initializers, value_info), then a walk over the
    nodes (topologically sorted, as ONNX requires) for the rest. Outer-scope values come from `outer`."""
    types = dict(outer)
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    types.update((t.name, t.data_type) for t in graph.initializer)
    types.update((t.values.name, t.values.data_type) for t in graph.sparse_initializer)
    for node in graph.node:
        kind = _output_type(node, types)
        if kind is None:
            continue
        for name in (node.output if node.op_type == "Split" else node.output[:1]):
            if name and name not in types:
                types[name] = kind
    return types


def _holds_float16(graph: onnx.GraphProto) -> bool:
    """Float16 weights, inputs, values or Casts into float16 anywhere, If / Loop / Scan bodies included."""
    if (any(t.data_type == _FLOAT16 for t in graph.initializer)
            or any(i.type.tensor_type.elem_type == _FLOAT16 for i in (*graph.input, *graph.output, *graph.value_info))):
        return True
    for node in graph.node:
        for attr in node.attribute:
            if ((attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == _FLOAT16)
                    or (attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT16)
                    or (attr.type == onnx.AttributeProto.GRAPH and _holds_float16(attr.g))
                    or any(_holds_float16(g) for g in attr.graphs)):
                return True
    return False


def _moves_the_batch_axis(perm: list[int]) -> bool:
    """The perms onnxruntime folds into the MatMul after them as a batch transpose (FusedMatMul transBatchA):
    the first axis moves to rank - 2 ([1, 0, 2], [1, 2, 0, 3]) or, with the last two axes swapped, to
    rank - 1 ([1, 2, 0], [1, 2, 3, 0])."""
    rank = len(perm)
    return (rank >= 3 and list(perm[:rank - 2]) == list(range(1, rank - 1))
            and tuple(perm[rank - 2:]) in ((0, rank - 1), (rank - 1, 0)))


def _crashing_transposes(graph: onnx.GraphProto, outer: dict[str, int]):
    """(Transpose, MatMul) node names of the crashing pattern in `graph` and its subgraphs, in a model that
    holds float16 (a value of unknown type counts as float16)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "FusedMatMul") and node.input:
            readers.setdefault(node.input[0], []).append(node)
    candidates = []
    for node in graph.node:
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or not readers.get(node.output[0]):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is not None and _moves_the_batch_axis(perm):
            candidates.append(node)
    bodies = [g for n in graph.node for a in n.attribute
              for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
    if not candidates and not bodies:
        return
    types = _graph_types(graph, outer)
    for node in candidates:
        kind = types.get(node.input[0])
        if kind in (_FLOAT16, None):
            matmul = readers[node.output[0]][0]
            yield node.name or node.output[0], matmul.name or matmul.output[0]
    for body in bodies:
        yield from _crashing_transposes(body, types)


def nchwc_crash(model: onnx.ModelProto) -> str | None:
    """Where the model has the graph that kills onnxruntime's NCHWc layout pass, or None.

    onnxruntime 1.32 on x86-64 dies (SIGSEGV at session creation) when a float16 Transpose that moves the
    batch axis (perm [1, 0, 2], [1, 2, 0], [1, 2, 0, 3], ...) feeds the first input of a MatMul: the
    attention of a PyTorch transformer with batch-second tensors after convert_fp16, where MatMul + bias
    -> Transpose -> MatMul becomes Gemm -> Reshape -> Transpose -> MatMul. Measured on 1.32: the same in
    float32, a Transpose of the last two axes only ([0, 2, 1], [0, 2, 1, 3]), or the Transpose into the
    second input does not crash. Where it errs, it errs towards the workaround (a crash kills the process;
    the pass it costs only rewrites float32 convolutions): it does not model which producers onnxruntime's
    CPU computes in float32 (a Relu or a bias-free MatMul into the Transpose did not crash), it searches
    If / Loop / Scan bodies (a body with the pattern did not crash on 1.32), and a value whose type the walk
    cannot tell counts as float16 when the model holds any float16."""
    if not _holds_float16(model.graph):
        return None
    found = next(_crashing_transposes(model.graph, {}), None)
    return None if found is None else f"float16 Transpose {found[0]!r} moves the batch axis into MatMul {found[1]!r}"


def disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """onnxruntime's optimizers that a session of this model must skip: none (its defaults, what a deployment
    gets) unless the model has the graph that crashes the NCHWc layout pass (`nchwc_crash`)."""
    return ["NchwcTransformer"] if nchwc_crash(model) else []


def open_session(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session; raises onnxruntime's own errors."""
    kwargs = {"providers": ["CPUExecutionProvider"], "disabled_optimizers": disabled_optimizers(model)}
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
    with tempfile.TemporaryDirectory(prefix="edgeopt-session-") as folder:
        path = os.path.join(folder, "model.onnx")
        save_model(model, path, external_data=True, sync=False)
        return ort.InferenceSession(path, options, **kwargs)
