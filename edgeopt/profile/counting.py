"""Per-node arithmetic from shapes: MACs for Conv / ConvTranspose / Gemm / MatMul, ops for the rest.

Conventions (all hand-checkable, see tests/test_profile_counting.py):

- `macs` counts multiply-accumulates of the MAC layers only; a bias add is
  not a MAC. `ops` counts arithmetic operations: 2 per MAC plus one per bias
  element for MAC layers, and for other layers one per output element per
  elementary operation (a transcendental counts as several, see _UNARY).
- Conv: N x Cout x prod(out spatial) x (Cin / group) x prod(kernel); strides,
  padding and dilation enter through the inferred output shape.
- ConvTranspose: N x Cin x prod(in spatial) x (Cout / group) x prod(kernel).
- Gemm: M x N x K. MatMul (batched, broadcast): prod(output) x K.
- LSTM / GRU / RNN: directions x seq x batch x (gates x hidden) x (input + hidden).
- Pooling: prod(output) x prod(kernel); global pooling: prod(input).
- Data movement (Transpose, Concat, Slice, ...) has 0 ops but moves bytes;
  views (Reshape, Flatten, Squeeze, ...) move nothing.

An operator not listed here is `counted=False` (reported in the coverage),
never silently 0; `estimate_node` then costs it conservatively (`estimated=True`)
so latency and energy stay numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from edgeopt.graph.macs import layer_macs
from edgeopt.profile.graphinfo import TensorInfo

# op classes, which are also the keys of device efficiency factors (plus data / view / qdq)
CONV, DEPTHWISE, GEMM, ELEMENTWISE = "conv", "depthwise", "gemm", "elementwise"
DATA, VIEW, QDQ = "data", "view", "qdq"
MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
           "QLinearMatMul", "FusedConv", "FusedGemm", "FusedMatMul", "LSTM", "GRU", "RNN"}

_BINARY = {"Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Pow": 4, "Max": 1, "Min": 1, "Mean": 1, "Sum": 1,
           "Equal": 1, "Greater": 1, "Less": 1, "GreaterOrEqual": 1, "LessOrEqual": 1, "And": 1, "Or": 1,
           "Xor": 1, "Mod": 1, "PRelu": 2, "Where": 1, "BitShift": 1, "BitwiseAnd": 1, "BitwiseOr": 1,
           "BitwiseXor": 1}
_UNARY = {"Relu": 1, "LeakyRelu": 2, "Clip": 2, "Abs": 1, "Neg": 1, "Sign": 1, "Floor": 1, "Ceil": 1,
          "Round": 1, "Not": 1, "Reciprocal": 1, "Sqrt": 1, "Exp": 4, "Log": 4, "Sigmoid": 4, "Tanh": 4,
          "HardSigmoid": 3, "HardSwish": 4, "Elu": 4, "Selu": 4, "Celu": 4, "Softplus": 4, "Softsign": 3,
          "Erf": 4, "Gelu": 8, "Mish": 8, "Sin": 4, "Cos": 4, "Tan": 4, "Asin": 4, "Acos": 4, "Atan": 4,
          "Sinh": 4, "Cosh": 4, "Asinh": 4, "Acosh": 4, "Atanh": 4, "IsNaN": 1, "IsInf": 1, "Shrink": 2,
          "ThresholdedRelu": 1, "BitwiseNot": 1, "Swish": 5, "QuickGelu": 5}
_NORM = {"BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5,
         "GroupNormalization": 5, "MeanVarianceNormalization": 5, "LpNormalization": 3,
         "SimplifiedLayerNormalization": 4, "SkipLayerNormalization": 6}
_SOFTMAX = {"Softmax": 5, "LogSoftmax": 5, "Hardmax": 1}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum"}
_POOL = {"MaxPool", "AveragePool", "LpPool"}
_RNN_GATES = {"LSTM", "GRU", "RNN"}  # W: [directions, gates x hidden, input], R: [.., .., hidden]
_GLOBAL_POOL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_DATA = {"Transpose", "Concat", "Split", "Slice", "Pad", "Gather", "GatherElements", "GatherND", "Tile",
         "Expand", "DepthToSpace", "SpaceToDepth", "Cast", "CastLike", "ConstantOfShape", "ScatterND",
         "ScatterElements", "Compress", "ReverseSequence", "OneHot", "Trilu", "TopK", "NonZero", "Range",
         "EyeLike", "Upsample", "Resize"}
_VIEW = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size", "Constant",
         "Optional", "OptionalGetElement"}
_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclass
class Count:
    op_class: str
    macs: int | None = 0
    ops: int | None = 0
    counted: bool = True
    reason: str = ""
    weight_input: int | None = None  # index of the main weight input (MAC layers)
    estimated: bool = False  # costed conservatively by estimate_node, not counted exactly


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _unknown(reason: str, op_class: str = ELEMENTWISE) -> Count:
    return Count(op_class, None, None, counted=False, reason=reason)


def _shape(t: TensorInfo | None) -> list[int] | None:
    return None if t is None else t.shape


def count_node(node: onnx.NodeProto, ins: list[TensorInfo | None], outs: list[TensorInfo | None]) -> Count:
    """MACs and ops of one node from its input / output tensor infos."""
    op = node.op_type
    out0 = outs[0] if outs else None
    out_shape = _shape(out0)
    out_numel = out0.numel if out0 is not None else None

    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        w_idx = 3 if op == "QLinearConv" else 1
        w = _shape(ins[w_idx]) if len(ins) > w_idx else None
        x = _shape(ins[0]) if ins else None
        if w is None or out_shape is None or x is None:
            return _unknown("shape unknown", CONV)
        group = int(_attr(node, "group", 1))
        cin_per_group = w[1]
        macs = layer_macs("Conv", x, w, out_shape)
        has_bias = len(ins) > (8 if op == "QLinearConv" else 2) and ins[-1] is not None
        ops = 2 * macs + (out_numel if has_bias else 0)
        cls = DEPTHWISE if group > 1 and cin_per_group == 1 else CONV
        return Count(cls, macs, ops, weight_input=w_idx)

    if op == "ConvTranspose":
        w, x = (_shape(ins[1]) if len(ins) > 1 else None), (_shape(ins[0]) if ins else None)
        if w is None or x is None or out_shape is None:
            return _unknown("shape unknown", CONV)
        group = int(_attr(node, "group", 1))
        macs = layer_macs("ConvTranspose", x, w, out_shape)
        has_bias = len(ins) > 2 and ins[2] is not None
        ops = 2 * macs + (out_numel if has_bias else 0)
        cls = DEPTHWISE if group > 1 and w[1] == 1 else CONV
        return Count(cls, macs, ops, weight_input=1)

    if op in ("Gemm", "FusedGemm"):
        a = _shape(ins[0]) if ins else None
        if a is None or out_shape is None or len(a) != 2:
            return _unknown("shape unknown", GEMM)
        macs = layer_macs("Gemm", a, None, out_shape, trans_a=bool(_attr(node, "transA", 0)))
        has_bias = len(ins) > 2 and ins[2] is not None
        return Count(GEMM, macs, 2 * macs + (out_numel if has_bias else 0), weight_input=1)

    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a_idx = 0
        a = _shape(ins[a_idx]) if ins else None
        if a is None or out_shape is None:
            return _unknown("shape unknown", GEMM)
        macs = layer_macs("MatMul", a, None, out_shape)
        return Count(GEMM, macs, 2 * macs, weight_input=3 if op == "QLinearMatMul" else 1)

    if op in _RNN_GATES:
        x = _shape(ins[0]) if ins else None
        w = _shape(ins[1]) if len(ins) > 1 else None
        r = _shape(ins[2]) if len(ins) > 2 else None
        if x is None or w is None or r is None:
            return _unknown("shape unknown", GEMM)
        seq, batch = (x[1], x[0]) if int(_attr(node, "layout", 0)) else (x[0], x[1])
        directions, gate_rows, hidden = w[0], w[1], r[2]
        macs = directions * seq * batch * gate_rows * (w[2] + hidden)
        # gate activations, bias adds and the cell update: a few ops per gate element
        ops = 2 * macs + directions * seq * batch * gate_rows * 4
        return Count(GEMM, macs, ops, weight_input=1)

    if op in _POOL:
        kernel = _attr(node, "kernel_shape")
        if out_numel is None or not kernel:
            return _unknown("shape unknown")
        return Count(ELEMENTWISE, 0, out_numel * math.prod(kernel))
    if op in _GLOBAL_POOL:
        x = ins[0] if ins else None
        if x is None or x.numel is None:
            return _unknown("shape unknown")
        return Count(ELEMENTWISE, 0, x.numel)
    if op in _REDUCE:
        x = ins[0] if ins else None
        if x is None or x.numel is None:
            return _unknown("shape unknown")
        return Count(ELEMENTWISE, 0, x.numel)
    for table in (_BINARY, _UNARY, _NORM, _SOFTMAX):
        if op in table:
            if out_numel is None:
                return _unknown("shape unknown")
            return Count(ELEMENTWISE, 0, out_numel * table[op])
    if op == "LRN":
        if out_numel is None:
            return _unknown("shape unknown")
        return Count(ELEMENTWISE, 0, out_numel * (int(_attr(node, "size", 1)) + 3))
    if op in _QDQ:
        if out_numel is None:
            return _unknown("shape unknown", QDQ)
        return Count(QDQ, 0, 2 * out_numel)
    if op in _DATA:
        if op in ("Resize", "Upsample"):
            mode = _attr(node, "mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            per = {"linear": 4, "cubic": 8}.get(mode, 0)
            if out_numel is None:
                return _unknown("shape unknown", DATA)
            return Count(DATA if per == 0 else ELEMENTWISE, 0, out_numel * per)
        return Count(DATA, 0, 0)
    if op in _VIEW:
        return Count(VIEW, 0, 0)
    return _unknown(f"operator {op} is not known to the counter")


def _broadcast(a: list[int], b: list[int]) -> list[int] | None:
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        out.append(max(da, db))
    return out[::-1]


def _mac_upper_bound(node: onnx.NodeProto, ins: list[TensorInfo | None], fallback_numel: int) -> int | None:
    """MACs of a MAC layer whose output shape is unknown, from its input shapes: an upper bound
    (a Conv as if stride 1 and 'same' padding); with only the weight known, the unknown
    activation taken as `fallback_numel` elements; None when the weight is unknown too."""
    x, w = (_shape(ins[0]) if ins else None), (_shape(ins[1]) if len(ins) > 1 else None)
    op = node.op_type
    if w is None:
        return None
    if x is None:
        if op in ("Conv", "ConvTranspose") and len(w) >= 3:
            return fallback_numel * w[1] * math.prod(w[2:])  # output (input) elements x MACs per element
        if op in ("Gemm", "MatMul") and len(w) == 2:
            return fallback_numel * (w[1] if op == "Gemm" and _attr(node, "transB", 0) else w[0])
        return None
    if op == "Conv" and len(x) == len(w) >= 3:
        return layer_macs("Conv", x, w, [x[0], w[0]] + x[2:])
    if op == "ConvTranspose" and len(x) == len(w) >= 3:
        return layer_macs("ConvTranspose", x, w, [])
    if op == "Gemm" and len(x) == 2 and len(w) == 2:
        n = w[0] if _attr(node, "transB", 0) else w[1]
        m = x[1] if _attr(node, "transA", 0) else x[0]
        return layer_macs("Gemm", x, None, [m, n], trans_a=bool(_attr(node, "transA", 0)))
    if op == "MatMul" and x and w:
        a, b = (x if len(x) > 1 else [1] + x), (w if len(w) > 1 else w + [1])
        batch = _broadcast(a[:-2], b[:-2])
        if batch is None:
            return None
        return layer_macs("MatMul", a, None, batch + [a[-2], b[-1]])
    return None


def estimate_node(node: onnx.NodeProto, ins: list[TensorInfo | None], outs: list[TensorInfo | None],
                  count: Count, fallback_numel: int) -> Count:
    """A conservative Count for a node `count_node` could not count: a MAC layer from its input
    shapes (upper bound), anything else as one element-wise op per output element (per input
    element when the outputs are unknown, at worst `fallback_numel`)."""
    reason = count.reason or "not counted"
    if node.op_type in MAC_OPS:
        macs = _mac_upper_bound(node, ins, fallback_numel)
        if macs is not None:
            return Count(count.op_class, macs, 2 * macs, counted=False, estimated=True,
                         reason=f"{reason}: MACs bounded from the weight and input shapes",
                         weight_input=count.weight_input)
    out_numels = [t.numel for t in outs if t is not None]
    if outs and len(out_numels) == len(outs) and None not in out_numels:
        return Count(ELEMENTWISE, 0, sum(out_numels), counted=False, estimated=True,
                     reason=f"{reason}: costed as element-wise on its outputs")
    in_numels = [t.numel for t in ins if t is not None and t.numel is not None]
    if in_numels:
        return Count(ELEMENTWISE, 0, sum(in_numels), counted=False, estimated=True,
                     reason=f"{reason}: costed as element-wise on its inputs")
    return Count(ELEMENTWISE, 0, fallback_numel, counted=False, estimated=True,
                 reason=f"{reason}: costed as element-wise on the largest activation")
