"""split_depthwise: a KxK Conv -> depthwise KxK conv (depth multiplier m) + pointwise 1x1 conv, by SVD."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.factorize.conv_layers import ConvLayer
from edgeopt.factorize.convsplit import SplitBudget, Namer, conv_node, geometry_attrs, replace, run_split, weight
from edgeopt.factorize.depthwise import DepthwiseFactorizer, DepthwiseSplit, depthwise_macs
from edgeopt.errors import UserError
from edgeopt.passes import register
from edgeopt.passes.base import Pass, PassContext, PassResult, param


@dataclass
class SplitDepthwiseParams(SplitBudget):
    depth_multiplier: int | Literal["auto"] = param(
        "auto", "depthwise kernels per input channel (m); `auto` takes per layer the smallest m whose "
                "error is within max_error; m >= min(out_channels, KH*KW) is exact", ge=1)


class _DepthwiseSplitter:
    action = "split"
    what = "m"
    size_figure = "depth_multiplier"

    def eligible(self, layer: ConvLayer) -> str | None:
        kh, kw = layer.weight.shape[2:]
        if kh * kw == 1:
            return "1x1 kernel: already pointwise, nothing to split"
        return None

    def saving(self, layer: ConvLayer, size: int) -> float:
        o, _, kh, kw = layer.weight.shape
        return 1.0 - size * (kh * kw + o) / (o * kh * kw)

    def macs_after(self, layer: ConvLayer, size: int) -> int | None:
        if layer.out_hw is None:
            return None
        o, c, kh, kw = layer.weight.shape
        return layer.batch * depthwise_macs(o, c, (kh, kw), size, layer.out_hw[0] * layer.out_hw[1])

    def factorizer(self, layer: ConvLayer, patches: np.ndarray | None, reference: np.ndarray | None,
                   images: np.ndarray | None) -> DepthwiseFactorizer:
        return DepthwiseFactorizer(layer.weight, layer.bias, patches, reference, images)

    def rewrite(self, graph: ir.Graph, layer: ConvLayer, split: DepthwiseSplit, namer: Namer) -> None:
        _, c, kh, kw = layer.weight.shape
        attrs = {**geometry_attrs(layer), "group": c, "kernel_shape": [kh, kw]}
        depthwise = conv_node(namer, f"{layer.name}_depthwise",
                              [layer.node.inputs[0], weight(graph, f"{layer.name}.depthwise.weight",
                                                            split.depthwise)], attrs)
        inputs = [depthwise.outputs[0], weight(graph, f"{layer.name}.pointwise.weight", split.pointwise)]
        if split.bias is not None:
            inputs.append(weight(graph, f"{layer.name}.pointwise.bias", split.bias))
        pointwise = conv_node(namer, f"{layer.name}_pointwise", inputs, {"kernel_shape": [1, 1]})
        replace(graph, layer.node, [depthwise, pointwise])


@register
class SplitDepthwise(Pass):
    name = "split_depthwise"
    summary = "replace KxK convolutions by depthwise KxK + pointwise 1x1 pairs (per-channel SVD, error budget)"
    description = (
        "For each group-1 Conv with a KxK kernel (K*K > 1; any stride, padding, dilation) and constant "
        "weights, each input channel's weight slice (out_channels x K*K) is factored by a rank-m SVD into"
        " m depthwise KxK kernels and the matching pointwise weights; the bias moves to the pointwise "
        "conv. The split is exact when m >= min(out_channels, K*K), and cheaper than the original when m "
        "< out_channels*K*K / (out_channels + K*K). "
        "With the recipe's `data`, layers are fitted in graph order on the inputs they get after the "
        "earlier splits: the fit is weighted by the statistics of those inputs, the pointwise weights "
        "and bias are refitted by least squares towards the original model's output at that layer "
        "(correcting part of the earlier splits' error), and max_error bounds the relative error of "
        "the layer output against the original model; without data it bounds the relative error of "
        "the weights. "
        "Each layer's note gives its MACs before and after, the error, the chosen m, or why it was "
        "skipped. Run it after fold_batchnorm."
    )
    lossless = False
    advice = "a tighter error budget (max_error) or fewer layers"
    Params = SplitDepthwiseParams

    def apply(self, model: onnx.ModelProto, params: SplitDepthwiseParams, ctx: PassContext) -> PassResult:
        requested = None if params.depth_multiplier == "auto" else int(params.depth_multiplier)
        if requested is not None and params.target_macs is not None:
            raise UserError("split_depthwise: target_macs chooses the depth multiplier per layer; set "
                            "`depth_multiplier: auto` or drop target_macs")
        return run_split(model, params, requested, ctx, _DepthwiseSplitter())
