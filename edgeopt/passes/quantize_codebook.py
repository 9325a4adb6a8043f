"""quantize_codebook: k-means weight sharing, 2^bits float centroids per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgeopt.passes import Pass, PassContext, PassResult, helper, param, register
from edgeopt.quant.decode import cast_mul_subgraph, codebook_subgraph
from edgeopt.quant.driver import Compressed, run_weight_pass
from edgeopt.quant.kmeans import kmeans_1d, scaled_codebook
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.qparams import float16_holds
from edgeopt.quant.weights import WeightSlot


def cluster_slot(slot: WeightSlot, bits: int, granularity: str, iters: int):
    """(indices, codebook, gather axis or None, channel scale or None) for one weight.

    channel_scaled: one codebook shared by all channels, each channel with its own scale, fitted
    by quant.kmeans.scaled_codebook (never worse than uniform levels at the same bits).
    """
    w = slot.array
    k = 1 << bits
    if granularity == "channel_scaled" and w.ndim >= 2:
        axis = slot.channel_axis
        rows = np.moveaxis(w, axis, 0)
        codebook, scale, indices = scaled_codebook(rows.reshape(rows.shape[0], -1), bits, iters)
        view = [1] * w.ndim
        view[axis] = w.shape[axis]
        indices = np.moveaxis(indices.reshape(rows.shape), 0, axis)
        scale = scale.reshape(view)
        return indices, codebook, None, scale
    if granularity == "per_channel" and w.ndim >= 2:
        if slot.channel_axis == w.ndim - 1 and w.ndim == 2:
            # [K, N] with output channels last (MatMul, Gemm without transB): one codebook column per channel.
            cols = [kmeans_1d(w[:, j], k, iters) for j in range(w.shape[1])]
            codebook = np.stack([c for c, _ in cols], axis=1)  # [k, N]
            indices = np.stack([i for _, i in cols], axis=1)  # [K, N]
            return indices, codebook, 0, None
        rows = w.reshape(w.shape[0], -1)  # channels on axis 0 (Conv; ConvTranspose groups by input channel)
        parts = [kmeans_1d(rows[i], k, iters) for i in range(rows.shape[0])]
        codebook = np.stack([c for c, _ in parts])  # [C, k]
        indices = np.stack([i for _, i in parts])  # [C, M]
        return indices, codebook, 1, None
    codebook, indices = kmeans_1d(w, k, iters)
    return indices, codebook, None, None


def decode_codebook(indices: np.ndarray, codebook: np.ndarray, axis: int | None, scale: np.ndarray | None,
                    shape: tuple[int, ...]) -> np.ndarray:
    """What the decode subgraph computes (float32), for the error figures."""
    codebook = np.asarray(codebook, np.float32)
    values = codebook[indices] if axis is None else np.take_along_axis(codebook, indices, axis=axis)
    values = values.reshape(shape)
    return values if scale is None else (values * np.asarray(scale, np.float32)).astype(np.float32)


@register
class QuantizeCodebook(Pass):
    name = "quantize_codebook"
    summary = "k-means weight sharing: 2^bits centroids per tensor or per channel, indices packed 4-bit or uint8"
    description = (
        "Deep Compression / CoreML kmeans_lut style weight sharing: each weight tensor (or each output "
        "channel) is clustered by 1-D k-means into 2^bits float32 centroids; the weight is stored as "
        "indices (packed two per byte as UINT4 for bits <= 4, else uint8) plus the codebook, and decoded "
        "in the graph by Cast -> Gather (per tensor; then Mul by the channel scales for channel_scaled) or "
        "GatherElements (per channel) -> Reshape, all from "
        "constants, so onnxruntime runs it and the profiler counts it as weight storage. k-means places "
        "levels where the weights are, so at the same bits it loses less than uniform levels. Packed "
        "indices need opset 21 (the model is upgraded, or left unchanged with the reason). Biases and "
        "tensors smaller than min_elements stay float; ConvTranspose per_channel groups by input channel.")
    lossless = False

    @dataclass
    class Params(WeightPassParams):
        bits: int = param(4, "index bits: 2^bits centroids (<= 4 stored packed as UINT4, else uint8)", ge=1, le=8)
        granularity: Literal["per_tensor", "channel_scaled", "per_channel"] = param(
            "channel_scaled", "one codebook per tensor; one per tensor over values divided by a per-output-channel "
                          "scale (decoded by a Mul); or one codebook per output channel")
        iters: int = param(60, "k-means (Lloyd) iterations at most", ge=1, le=1000)


    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        def storage(array: np.ndarray | None, per_value: bool) -> np.ndarray | None:
            """float16 when scale_dtype allows it and float16 holds the values, else float32."""
            if array is None:
                return None
            if params.scale_dtype != "float32" and float16_holds(array, per_value):
                return np.asarray(array).astype(np.float16)
            return np.asarray(array, np.float32)

        def compress(graph, slot: WeightSlot) -> Compressed:
            indices, codebook, axis, scale = cluster_slot(slot, params.bits, params.granularity, params.iters)
            codebook, scale = storage(codebook, per_value=False), storage(scale, per_value=True)
            out, nbytes = codebook_subgraph(graph, slot.name, indices, codebook, params.bits, axis,
                                            slot.array.shape, scale)
            decoded = decode_codebook(indices, codebook, axis, scale, slot.array.shape)
            return Compressed(out, nbytes, decoded,
                              f"W {slot.name} -> {1 << params.bits} centroids {params.granularity}",
                              {"bits": params.bits, "granularity": params.granularity,
                               "centroids": int(codebook.size), "codebook_dtype": str(codebook.dtype)})

        return run_weight_pass(
            model, params, ctx, target_opset=21 if params.bits <= 4 else 13,  # UINT4 storage needs 21
            verb="clustered", compress=compress, build_int8_bias=cast_mul_subgraph, fold=helper("fold_batchnorm"),
            summary_head=lambda n: f"clustered {n} weights into {1 << params.bits} centroids {params.granularity}")
