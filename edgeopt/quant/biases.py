"""The biases of the layers a weight pass compresses: kept float32, stored float16, or int8.

float16 is the default: a bias is added once per output, so float16's
relative error (2^-11) is far below the error of the int8/int4 weights it
sits beside, and it halves bytes that matter on small models (MobileNet's
depthwise layers have one bias per 9 weights). A bias float16 cannot hold
(|b| > 65504) stays float32 and the note says so. The float16 copy is
decoded by a Cast of a constant, which onnxruntime folds at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from edgeopt.pass_types import NodeNote
from edgeopt.quant.decode import add_const, cast_to_float
from edgeopt.quant.qparams import compute_qparams, dequantize, quantize
from edgeopt.quant.report import fmt_bytes
from edgeopt.quant.select import node_label
from edgeopt.quant.weights import find_biases

BIAS_MODES = ("float32", "float16", "int8")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class BiasStats:
    """What the bias step did, for the pass summary."""

    mode: str
    count: int = 0  # biases stored in `mode`
    kept: int = 0  # biases that stay float32
    bytes_before: int = 0  # of the stored ones
    bytes_after: int = 0
    kept_bytes: int = 0

    def describe(self) -> str:
        parts = []
        if self.count:
            parts.append(f"{self.count} biases to {self.mode} ({fmt_bytes(self.bytes_before)} -> "
                         f"{fmt_bytes(self.bytes_after)})")
        if self.kept:
            parts.append(f"{self.kept} biases ({fmt_bytes(self.kept_bytes)}) stay float32")
        if not parts:
            parts.append("no biases")
        return ", ".join(parts)


def _replace(graph: ir.Graph, value: ir.Value, out: ir.Value) -> None:
    value.replace_all_uses_with(out)
    if value.name in graph.initializers:
        graph.initializers.pop(value.name)


def store_biases(graph: ir.Graph, mode: str, op_types: list[str], exclude: list[str], notes: list[NodeNote],
                 build_int8: Callable) -> BiasStats:
    """Rewrite each float32 bias of the compressed ops as `mode`; build_int8 is the pass's int8 decoder
    (dequantize_subgraph or cast_mul_subgraph)."""
    if mode not in BIAS_MODES:
        raise ValueError(f"unknown bias mode {mode!r}")
    stats = BiasStats(mode)
    for value, readers, bias in find_biases(graph, op_types, exclude):
        name = value.name or "bias"
        if mode == "float32" or (mode == "float16" and np.max(np.abs(bias), initial=0.0) > FLOAT16_MAX):
            stats.kept += 1
            stats.kept_bytes += int(bias.nbytes)
            if mode == "float16":
                for node in readers:
                    notes.append(NodeNote(node_label(node), node.op_type, "skipped",
                                          f"bias {name} stays float32: |b| exceeds float16's range"))
            continue
        if mode == "float16":
            half = bias.astype(np.float16)
            out = cast_to_float(graph, add_const(graph, f"{name}_fp16", half), name)
            nbytes, decoded = int(half.nbytes), half.astype(np.float32)
        else:
            qp = compute_qparams(bias, 8, True)
            q = quantize(bias, qp)
            out, nbytes = build_int8(graph, name, q, qp, bias.shape)
            decoded = dequantize(q, qp)
        _replace(graph, value, out)
        stats.count += 1
        stats.bytes_before += int(bias.nbytes)
        stats.bytes_after += nbytes
        err = float(np.max(np.abs(decoded - bias), initial=0.0))
        for node in readers:
            notes.append(NodeNote(node_label(node), node.op_type, "quantized" if mode == "int8" else "converted",
                                  f"bias {name} -> {mode}",
                                  {"bytes_before": int(bias.nbytes), "bytes_after": nbytes, "max_abs_error": err}))
    return stats
