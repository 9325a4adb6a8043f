"""The cost class of a MAC layer from its shape, and how well its channels fill the device's vector lanes.

Runtimes run different kernels for layers the op type alone does not tell apart: a 3x3 stride-1 conv
goes to Winograd / im2col-free kernels (ncnn, TVM, TensorRT), a 1x1 conv is a plain GEMM, a depthwise
conv is memory-bound on most chips. Each class gets its own efficiency in a device profile
(`efficiency.conv3x3`, `.pointwise`, ...; a missing one falls back to `efficiency.conv`). A grouped conv
with a spatial kernel (1 < group, not depthwise: ResNeXt's and RegNet's grouped 3x3) is `group`
independent small convs that runtimes run through their generic per-group path (im2col per group, no
Winograd, little reuse per tile), below a dense conv of its kernel at the same MACs: it is its own class,
`grouped` (falling back to `conv`). A grouped 1x1 (ShuffleNet) is `group` plain GEMMs: `pointwise`.
Both are priced with their per-group channels (below).

Reduction depth: a GEMM kernel keeps a tile of outputs in registers and streams the reduction
(input channels x kernel area, per group) through it; each tile's set-up and write-back cost is paid
once per reduction, so a shallow reduction runs below the kernel's efficiency. The profile's
`depth_half` is the depth at which half is lost: depth utilisation = depth / (depth + depth_half).
It is what separates MobileNet v2's 16- to 32-channel bottleneck 1x1s, or SqueezeNet's squeeze layers,
from ResNet's 256-channel ones at the same MACs.

Lane utilisation: a layer whose channel count is not a multiple of the device's channel alignment
(its SIMD width / systolic-array edge) wastes the remainder of the last vector, so its compute time is
divided by used / padded channels: input and output channels where the kernel packs both into its
vectors (a systolic array, a GPU tile, ncnn's packed layouts: the 3-channel first conv of every image
model on an 8-wide array runs at 3 / 8), the output channels only where the profile says
`reduction_lanes: false` (onnxruntime's NCHWc kernels run the NCHW first layer with their lanes along
the output channels and the reduction in registers: the stem runs at full speed there).
"""

from __future__ import annotations

import math

import onnx

from edgeopt.devices.model import CONV_CLASSES  # refinements of "conv"; efficiency falls back to conv

DENSE_CLASSES = ("conv",) + CONV_CLASSES  # the GEMM-like conv classes


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def cost_class(node: onnx.NodeProto, op_class: str, weight_shape: list[int] | None) -> str:
    """grouped / conv3x3 / pointwise / conv for a dense-class conv, else the counting class."""
    if op_class != "conv" or node.op_type not in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        return op_class
    if not weight_shape or len(weight_shape) < 3:
        return op_class
    kernel = list(weight_shape[2:])
    if int(_attr(node, "group", 1) or 1) > 1 and any(k > 1 for k in kernel):  # depthwise: its own op class
        return "grouped"
    strides = list(_attr(node, "strides", None) or [1] * len(kernel))
    if all(k == 1 for k in kernel):
        return "pointwise"
    if all(k == 3 for k in kernel) and all(s == 1 for s in strides):
        return "conv3x3"
    return "conv"


def _fill(channels: int | None, lanes: int) -> float:
    if not channels or lanes <= 1:
        return 1.0
    return channels / (math.ceil(channels / lanes) * lanes)


def lane_utilization(node: onnx.NodeProto, cls: str, weight_shape: list[int] | None, lanes: int,
                     reduction_lanes: bool = True) -> float:
    """Fraction of the vector lanes a layer's channels fill (1.0 when unknown or lanes == 1).

    reduction_lanes: whether the reduction (input channels, an FC's input width) also spans the lanes
    (a systolic array, a GPU tile) or only the outputs do (a CPU's SIMD kernels)."""
    if lanes <= 1 or not weight_shape:
        return 1.0
    if cls == "depthwise":
        return _fill(weight_shape[0], lanes)
    if cls in DENSE_CLASSES and len(weight_shape) >= 2:  # per group: [Cout, Cin / group, ...]
        group = max(int(_attr(node, "group", 1) or 1), 1)
        return _fill(weight_shape[0] // group, lanes) * (_fill(weight_shape[1], lanes) if reduction_lanes else 1.0)
    if cls == "gemm" and len(weight_shape) == 2:
        trans_b = node.op_type == "Gemm" and bool(_attr(node, "transB", 0))
        k, n = (weight_shape[1], weight_shape[0]) if trans_b else (weight_shape[0], weight_shape[1])
        return (_fill(k, lanes) if reduction_lanes else 1.0) * _fill(n, lanes)
    return 1.0


def reduction_depth(node: onnx.NodeProto, cls: str, weight_shape: list[int] | None) -> int | None:
    """Multiply-adds per output element of a GEMM-like layer (input channels per group x kernel area;
    an FC's input width), or None for the classes that are not a GEMM (depthwise, element-wise)."""
    if not weight_shape or len(weight_shape) < 2:
        return None
    if cls in DENSE_CLASSES:
        return int(weight_shape[1] * math.prod(weight_shape[2:]))
    if cls == "gemm" and len(weight_shape) == 2:
        trans_b = node.op_type == "Gemm" and bool(_attr(node, "transB", 0))
        return int(weight_shape[1] if trans_b else weight_shape[0])
    return None


def depth_utilization(depth: int | None, depth_half: float | None) -> float:
    """depth / (depth + depth_half): how much of its efficiency a kernel keeps at this reduction depth."""
    if not depth or not depth_half:
        return 1.0
    return depth / (depth + depth_half)
