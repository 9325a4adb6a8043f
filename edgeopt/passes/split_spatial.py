"""split_spatial: a KxK Conv -> Kx1 conv to r channels + 1xK conv (spatial SVD)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.factorize.conv_layers import ConvLayer
from edgeopt.factorize.convsplit import SplitBudget, Namer, conv_node, geometry_attrs, replace, run_split, weight
from edgeopt.factorize.spatial import SpatialFactorizer, SpatialSplit, spatial_macs
from edgeopt.errors import UserError
from edgeopt.passes import register
from edgeopt.passes.base import Pass, PassContext, PassResult, param


@dataclass
class SplitSpatialParams(SplitBudget):
    rank: int | Literal["auto"] = param(
        "auto", "channels between the Kx1 and the 1xK conv (r); `auto` takes per layer the smallest r "
                "whose error is within max_error; r >= min(in_channels*KH, out_channels*KW) is exact", ge=1)


def _axis(attrs: dict, key: str, axis: int, default: int, length: int = 2) -> int:
    values = attrs.get(key)
    return int(values[axis]) if values and len(values) == length else default


class _SpatialSplitter:
    action = "split"
    what = "r"
    size_figure = "rank"

    def eligible(self, layer: ConvLayer) -> str | None:
        kh, kw = layer.weight.shape[2:]
        if kh == 1 or kw == 1:
            return f"{kh}x{kw} kernel: already one-dimensional, nothing to split"
        return None

    def _width_ratio(self, layer: ConvLayer) -> float:
        """Input width / output width: the vertical conv runs at the full input width."""
        if layer.in_hw and layer.out_hw:
            return layer.in_hw[1] / layer.out_hw[1]
        return float(layer.geometry.strides[1])

    def saving(self, layer: ConvLayer, size: int) -> float:
        o, c, kh, kw = layer.weight.shape
        return 1.0 - size * (c * kh * self._width_ratio(layer) + o * kw) / (o * c * kh * kw)

    def macs_after(self, layer: ConvLayer, size: int) -> int | None:
        if layer.out_hw is None or layer.in_hw is None:
            return None
        o, c, kh, kw = layer.weight.shape
        return layer.batch * spatial_macs(o, c, (kh, kw), size, layer.out_hw, layer.in_hw[1])

    def factorizer(self, layer: ConvLayer, patches: np.ndarray | None, reference: np.ndarray | None,
                   images: np.ndarray | None) -> SpatialFactorizer:
        return SpatialFactorizer(layer.weight, layer.bias, patches, reference, images)

    def rewrite(self, graph: ir.Graph, layer: ConvLayer, split: SpatialSplit, namer: Namer) -> None:
        kh, kw = layer.weight.shape[2:]
        attrs = geometry_attrs(layer)
        vertical, horizontal = {"kernel_shape": [kh, 1]}, {"kernel_shape": [1, kw]}
        for key, default in (("strides", 1), ("dilations", 1)):
            vertical[key] = [_axis(attrs, key, 0, default), 1]
            horizontal[key] = [1, _axis(attrs, key, 1, default)]
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", ""):
            # SAME_* / VALID resolve per axis; the unit axis of each conv gets no padding.
            vertical["auto_pad"] = horizontal["auto_pad"] = auto_pad
        elif attrs.get("pads"):
            top, left, bottom, right = attrs["pads"]
            vertical["pads"], horizontal["pads"] = [top, 0, bottom, 0], [0, left, 0, right]
        first = conv_node(namer, f"{layer.name}_vertical",
                          [layer.node.inputs[0], weight(graph, f"{layer.name}.vertical.weight", split.vertical)],
                          vertical)
        inputs = [first.outputs[0], weight(graph, f"{layer.name}.horizontal.weight", split.horizontal)]
        if split.bias is not None:
            inputs.append(weight(graph, f"{layer.name}.horizontal.bias", split.bias))
        second = conv_node(namer, f"{layer.name}_horizontal", inputs, horizontal)
        replace(graph, layer.node, [first, second])


@register
class SplitSpatial(Pass):
    name = "split_spatial"
    summary = "replace KxK convolutions by Kx1 then 1xK convolutions of rank r (spatial SVD, error budget)"
    description = (
        "For each group-1 Conv with a KHxKW kernel (both > 1; any stride, padding, dilation) and constant"
        " weights, the weights arranged as a matrix with rows (in_channel, kh) and columns (out_channel, "
        "kw) are factored by a rank-r SVD into a KHx1 conv from in_channels to r channels (taking the "
        "vertical stride, padding and dilation) followed by a 1xKW conv from r to out_channels (the "
        "horizontal ones, and the bias). The split is exact when r >= min(in_channels*KH, "
        "out_channels*KW). "
        "With the recipe's `data`, layers are fitted in graph order on the inputs they get after the "
        "earlier splits: the fit is weighted by the statistics of those inputs, the 1xKW weights "
        "and bias are refitted by least squares towards the original model's output at that layer "
        "(correcting part of the earlier splits' error), and max_error bounds the relative error of "
        "the layer output against the original model; without data it bounds the relative error of "
        "the weights. "
        "Each layer's note gives its MACs before and after, the error, the chosen r, or why it was "
        "skipped. Run it after fold_batchnorm."
    )
    lossless = False
    advice = "a tighter error budget (max_error) or fewer layers"
    Params = SplitSpatialParams

    def apply(self, model: onnx.ModelProto, params: SplitSpatialParams, ctx: PassContext) -> PassResult:
        requested = None if params.rank == "auto" else int(params.rank)
        if requested is not None and params.target_macs is not None:
            raise UserError("split_spatial: target_macs chooses the rank per layer; set "
                            "`rank: auto` or drop target_macs")
        return run_split(model, params, requested, ctx, _SpatialSplitter())
