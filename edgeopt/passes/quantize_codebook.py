"""quantize_codebook: k-means weight sharing, 2^bits float centroids per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgeopt.passes import Pass, PassContext, PassResult, param, register
from edgeopt.quant.decode import codebook_subgraph
from edgeopt.quant.driver import Compressed, run_weight_pass
from edgeopt.quant.kmeans import kmeans_1d
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.weights import WeightSlot


def cluster_slot(slot: WeightSlot, bits: int, granularity: str, iters: int):
    """(indices, codebook, gather axis or None, channel scale or None, decoded float32) for one weight."""
    w = slot.array
    k = 1 << bits
    if granularity == "channel_scaled" and w.ndim >= 2:
        axis = slot.channel_axis
        others = tuple(i for i in range(w.ndim) if i != axis)
        view = [1] * w.ndim
        view[axis] = w.shape[axis]
        absmax = np.max(np.abs(w), axis=others).reshape(view).astype(np.float64)
        absmax = np.where(absmax > 0, absmax, 1.0)
        # One codebook over the channel-normalised values, with a centroid pinned at 0 (shared
        # levels that miss 0 shift whole channels), then each channel's scale refitted by least squares.
        codebook, indices = kmeans_1d(w / absmax, k, iters, pin_zero=True)
        unit = codebook[indices].astype(np.float64)
        num = np.sum(unit * w, axis=others).reshape(view)
        den = np.sum(unit * unit, axis=others).reshape(view)
        scale = np.where(den > 0, num / np.maximum(den, 1e-30), absmax).astype(np.float32)
        return indices, codebook, None, scale, (codebook[indices] * scale).astype(np.float32)
    if granularity == "per_channel" and w.ndim >= 2:
        if slot.channel_axis == w.ndim - 1 and w.ndim == 2:
            # [K, N] with output channels last (MatMul, Gemm without transB): one codebook column per channel.
            cols = [kmeans_1d(w[:, j], k, iters) for j in range(w.shape[1])]
            codebook = np.stack([c for c, _ in cols], axis=1)  # [k, N]
            indices = np.stack([i for _, i in cols], axis=1)  # [K, N]
            decoded = np.take_along_axis(codebook, indices, axis=0)
            return indices, codebook, 0, None, decoded.reshape(w.shape)
        rows = w.reshape(w.shape[0], -1)  # channels on axis 0 (Conv; ConvTranspose groups by input channel)
        parts = [kmeans_1d(rows[i], k, iters) for i in range(rows.shape[0])]
        codebook = np.stack([c for c, _ in parts])  # [C, k]
        indices = np.stack([i for _, i in parts])  # [C, M]
        decoded = np.take_along_axis(codebook, indices, axis=1)
        return indices, codebook, 1, None, decoded.reshape(w.shape)
    codebook, indices = kmeans_1d(w, k, iters)
    return indices, codebook, None, None, codebook[indices]


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
        def compress(graph, slot: WeightSlot) -> Compressed:
            indices, codebook, axis, scale, decoded = cluster_slot(slot, params.bits, params.granularity,
                                                                    params.iters)
            out, nbytes = codebook_subgraph(graph, slot.name, indices, codebook, params.bits, axis,
                                            slot.array.shape, scale)
            return Compressed(out, nbytes, decoded,
                              f"W {slot.name} -> {1 << params.bits} centroids {params.granularity}",
                              {"bits": params.bits, "granularity": params.granularity,
                               "centroids": int(codebook.size)})

        return run_weight_pass(
            model, params, ctx, target_opset=21 if params.bits <= 4 else 13,  # UINT4 storage needs 21
            verb="clustered", compress=compress,
            summary_head=lambda n, _: f"clustered {n} weights into {1 << params.bits} centroids {params.granularity}")
