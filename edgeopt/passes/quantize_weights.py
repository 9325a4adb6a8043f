"""quantize_weights: int8 / int4 weights (per tensor, per channel, block-wise) decoded by DequantizeLinear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgeopt.passes import Pass, PassContext, PassResult, helper, param, register
from edgeopt.quant.decode import cast_mul_subgraph, dequantize_subgraph
from edgeopt.quant.driver import Compressed, graph_opset, run_weight_pass
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.qparams import compute_qparams, dequantize, float16_holds, quantize
from edgeopt.quant.weights import WeightSlot


def required_opset(bits: int, granularity: str, scale_dtype: str, decode: str = "dequantize_linear") -> int:
    """The lowest opset whose DequantizeLinear (or Cast) can decode this format."""
    if decode == "cast_mul":
        return 21 if bits == 4 else 1  # Cast from INT4 / UINT4
    if bits == 4 or granularity == "block":
        return 21  # INT4 / UINT4 and block_size
    if scale_dtype == "float16":
        return 19  # float16 scales
    if granularity == "per_channel":
        return 13  # the axis attribute
    return 10


def quantize_slot(slot: WeightSlot, bits: int, symmetric: bool, granularity: str, block_size: int,
                  clip: str, scale_dtype: type):
    """(integers, QParams, decoded float32 in the original shape) for one weight."""
    w = slot.array
    if granularity == "block" and w.ndim >= 1:
        w2 = w.reshape(slot.block_shape)
        qp = compute_qparams(w2, bits, symmetric, axis=slot.block_axis, block_size=block_size, clip=clip,
                             scale_dtype=scale_dtype)
    elif granularity == "per_channel" and w.ndim >= 2:
        w2 = w
        qp = compute_qparams(w, bits, symmetric, axis=slot.channel_axis, clip=clip, scale_dtype=scale_dtype)
    else:
        w2 = w
        qp = compute_qparams(w, bits, symmetric, clip=clip, scale_dtype=scale_dtype)
    q = quantize(w2, qp)
    return q, qp, dequantize(q, qp).reshape(w.shape)


@register
class QuantizeWeights(Pass):
    name = "quantize_weights"
    summary = "Store Conv/ConvTranspose/Gemm/MatMul/Gather weights as int8 or int4, decoded by DequantizeLinear"
    description = (
        "Weight-only quantization: each weight becomes a real low-bit initializer (int8/uint8, or INT4/UINT4 "
        "packed two per byte) plus float scales (and zero points when asymmetric), decoded in the graph by "
        "DequantizeLinear, so plain onnxruntime runs the model and the file really shrinks. Activations "
        "stay float. Granularity: one scale per tensor, per output channel, or per block of block_size "
        "values along the reduction axis (Conv weights are viewed as (out, in*kh*kw) for blocks). "
        "Per-channel needs opset 13, float16 scales 19, int4 or blocks 21: the model is upgraded with "
        "onnx's version converter, and left unchanged with the reason when it cannot be (scale_dtype auto "
        "falls back to float32 scales when only opset 19 is out of reach). Biases stay float (float16 by "
        "default) and tensors smaller than min_elements stay float32.")
    lossless = False

    @dataclass
    class Params(WeightPassParams):
        bits: Literal[8, 4] = param(8, "bits per weight: 8 (int8) or 4 (int4, opset 21)")
        symmetric: bool = param(True, "signed integers with zero point 0; false: unsigned with a zero point")
        granularity: Literal["per_tensor", "per_channel", "block"] = param(
            "per_channel", "one scale per tensor, per output channel, or per block of block_size values")
        block_size: int = param(32, "values per scale along the reduction axis (granularity: block)", ge=2)
        clip: Literal["auto", "minmax", "mse"] = param(
            "auto", "range per scale: the full min/max, or the clipped range with the least squared error; "
                    "auto: mse for 4 bits (outliers waste most of 15 levels), minmax for 8")
        decode: Literal["dequantize_linear", "cast_mul"] = param(
            "dequantize_linear",
            "dequantize_linear: the standard form int8/int4-aware runtimes keep compressed in memory "
            "(onnxruntime's CPU decodes it on every run: slower on this host); cast_mul: Cast and Mul of "
            "constants, which onnxruntime folds at load (fp32 speed here; only the file shrinks)")

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        clip = params.clip if params.clip != "auto" else ("mse" if params.bits <= 4 else "minmax")
        build = cast_mul_subgraph if params.decode == "cast_mul" else dequantize_subgraph
        kind = f"{'int' if params.symmetric else 'uint'}{params.bits}"
        half_opset = required_opset(params.bits, params.granularity, "float16", params.decode)
        f32_opset = required_opset(params.bits, params.granularity, "float32", params.decode)
        # auto: float16 scales where there are many of them (per channel, per block); one scale per
        # tensor is not worth an opset upgrade
        wants_half = params.scale_dtype == "float16" or (
            params.scale_dtype == "auto" and params.granularity != "per_tensor")

        def compress(graph, slot: WeightSlot) -> Compressed:
            half = wants_half and graph_opset(graph) >= half_opset
            q, qp, decoded = quantize_slot(slot, params.bits, params.symmetric, params.granularity,
                                           params.block_size, clip, np.float32)
            if half and float16_holds(qp.scale):  # else tiny or huge channels: this tensor keeps float32
                # the integers are derived from the float16 scales, so the decode is self-consistent
                q, qp, decoded = quantize_slot(slot, params.bits, params.symmetric, params.granularity,
                                               params.block_size, clip, np.float16)
            out, nbytes = build(graph, slot.name, q, qp, slot.array.shape)
            scales = ("" if qp.scale.dtype == np.float16 or not wants_half
                      else ", float32 scales (float16 cannot hold them)" if half else ", float32 scales")
            return Compressed(out, nbytes, decoded,
                              f"W {slot.name} -> {'int' if qp.signed else 'uint'}{params.bits} "
                              f"{params.granularity}{scales}",
                              {"bits": params.bits, "granularity": params.granularity,
                               "scale_dtype": str(qp.scale.dtype)})

        return run_weight_pass(
            model, params, ctx, verb="quantized", compress=compress, build_int8_bias=build, fold=helper("fold_batchnorm"),
            target_opset=half_opset if params.scale_dtype == "float16" else f32_opset,
            preferred_opset=half_opset if params.scale_dtype == "auto" and wants_half else None,
            summary_head=lambda n: f"quantized {n} weights to {kind} {params.granularity}")
