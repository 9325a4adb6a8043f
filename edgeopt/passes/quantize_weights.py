"""quantize_weights: int8 / int4 weights (per tensor, per channel, block-wise) decoded by DequantizeLinear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.quant.decode import cast_mul_subgraph, dequantize_subgraph
from edgeopt.quant.driver import Compressed, Extra, run_weight_pass
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.qparams import compute_qparams, dequantize, quantize
from edgeopt.quant.select import node_label
from edgeopt.quant.weights import WeightSlot, find_biases


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
        "onnx's version converter, and left unchanged with the reason when it cannot be. Biases and "
        "tensors smaller than min_elements stay float.")
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
        scale_dtype: Literal["float32", "float16"] = param(
            "float32", "storage type of the scales (float16 halves their bytes, opset 19; decoded by a Cast)")
        decode: Literal["dequantize_linear", "cast_mul"] = param(
            "dequantize_linear",
            "dequantize_linear: the standard form int8/int4-aware runtimes keep compressed in memory "
            "(onnxruntime's CPU decodes it on every run: slower on this host); cast_mul: Cast and Mul of "
            "constants, which onnxruntime folds at load (fp32 speed here; only the file shrinks)")
        quantize_biases: bool = param(
            False, "biases too, as int8 with one scale per tensor (by default they stay float32)")

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        scale_dtype = np.float16 if params.scale_dtype == "float16" else np.float32
        clip = params.clip if params.clip != "auto" else ("mse" if params.bits <= 4 else "minmax")
        build = cast_mul_subgraph if params.decode == "cast_mul" else dequantize_subgraph
        kind = f"{'int' if params.symmetric else 'uint'}{params.bits}"

        def compress(graph, slot: WeightSlot) -> Compressed:
            q, qp, decoded = quantize_slot(slot, params.bits, params.symmetric, params.granularity,
                                           params.block_size, clip, scale_dtype)
            if scale_dtype is np.float16 and not np.all(np.isfinite(np.asarray(qp.scale, np.float32))):
                q, qp, decoded = quantize_slot(slot, params.bits, params.symmetric, params.granularity,
                                               params.block_size, clip, np.float32)
            out, nbytes = build(graph, slot.name, q, qp, slot.array.shape)
            return Compressed(out, nbytes, decoded,
                              f"W {slot.name} -> {'int' if qp.signed else 'uint'}{params.bits} {params.granularity}",
                              {"bits": params.bits, "granularity": params.granularity})

        def quantize_biases(graph, notes: list[NodeNote]) -> Extra:
            added = Extra()
            for value, readers, bias in find_biases(graph, params.op_types, params.exclude):
                qp = compute_qparams(bias, 8, True)
                q = quantize(bias, qp)
                out, nbytes = build(graph, value.name or "bias", q, qp, bias.shape)
                value.replace_all_uses_with(out)
                if value.name in graph.initializers:
                    graph.initializers.pop(value.name)
                added.bytes_before += bias.nbytes
                added.bytes_after += nbytes
                added.count += 1
                err = float(np.max(np.abs(dequantize(q, qp) - bias)))
                for node in readers:
                    notes.append(NodeNote(node_label(node), node.op_type, "quantized",
                                          f"bias {value.name} -> int8 per_tensor",
                                          {"bytes_before": int(bias.nbytes), "bytes_after": nbytes,
                                           "max_abs_error": err}))
            return added

        return run_weight_pass(
            model, params, ctx, verb="quantized", compress=compress,
            target_opset=required_opset(params.bits, params.granularity, params.scale_dtype, params.decode),
            extra=quantize_biases if params.quantize_biases else None,
            summary_head=lambda n, extra: f"quantized {n} weights to {kind} {params.granularity}"
                                          + (f" and {extra.count} biases to int8" if extra.count else ""))
