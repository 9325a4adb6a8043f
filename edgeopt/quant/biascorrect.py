"""Bias correction for weight quantization (Nagel et al. 2019, "Data-free quantization", section 4.2).

Rounding the weights changes each output channel's mean by dW . E[x]: shared
codebook levels and clipped ranges make that shift systematic rather than
noise, and it adds up layer after layer. With calibration data we measure
E[x] per input channel on the float model and subtract the shift from the
bias (adding a bias where the layer has none). Padding is ignored (a zero-
padded border sees a slightly smaller mean), so the correction is close, not
exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array
from edgeopt.quant.means import means_key


def output_shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """dW . E[x] per output channel for a Conv or Gemm, or None when the layout is not handled."""
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        out_ch, in_per_group = delta.shape[0], delta.shape[1]
        if mean.shape[0] != in_per_group * groups or out_ch % groups:
            return None
        per_in = delta.reshape(out_ch, in_per_group, -1).sum(axis=2)  # [O, I/g]
        group_of = np.arange(out_ch) // (out_ch // groups)
        m = mean.reshape(groups, in_per_group)[group_of]  # [O, I/g]
        return np.sum(per_in * m, axis=1)
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return None
        alpha = node.attributes.get_float("alpha", 1.0)
        b = delta if node.attributes.get_int("transB", 0) else delta.T  # [N, K]
        if mean.shape[0] != b.shape[1]:
            return None
        return alpha * (b @ mean)
    return None


def correct_bias(graph: ir.Graph, node: ir.Node, shift: np.ndarray) -> str | None:
    """Subtract shift from the node's bias (creating one if absent); the reason if it cannot."""
    if node.op_type == "Gemm" and node.attributes.get_float("beta", 1.0) != 1.0:
        return "Gemm beta != 1"
    bias_index = 2
    if len(node.inputs) > bias_index and node.inputs[bias_index] is not None:
        value = node.inputs[bias_index]
        bias = const_array(value)
        if bias is None or bias.dtype != np.float32:
            return "the bias is not a float32 constant"
        if len(list(value.uses())) != 1 or value.is_graph_input() or value.is_graph_output():
            return "the bias is shared"
        try:
            new = (bias.astype(np.float64) - shift.reshape(bias.shape) if bias.size == shift.size
                   else None)
        except ValueError:
            new = None
        if new is None:
            return f"bias shape {list(bias.shape)} does not match {shift.size} output channels"
        fresh = add_initializer(graph, f"{value.name}_corrected", new.astype(np.float32))
        node.replace_input_with(bias_index, fresh)
        return None
    fresh = add_initializer(graph, f"{node.name or 'layer'}_bias_correction", (-shift).astype(np.float32))
    while len(node.inputs) < bias_index:
        return "no place for a bias"
    node.resize_inputs(bias_index + 1)
    node.replace_input_with(bias_index, fresh)
    return None


def correct_slot(graph: ir.Graph, slot, decoded: np.ndarray, means: dict) -> dict:
    """Bias-correct every Conv / Gemm reading this weight: {"bias_shift_max": ...} or {"bias_correction": why not}."""
    delta = decoded.astype(np.float64) - slot.array.astype(np.float64)
    shifts, problems = [], []
    for node in slot.nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2:
            problems.append(f"{node.op_type} not handled")
            continue
        mean = means.get(means_key(node))
        if mean is None:
            problems.append("no activation mean")
            continue
        shift = output_shift(node, delta, mean)
        if shift is None:
            problems.append("layout not handled")
            continue
        problem = correct_bias(graph, node, shift)
        if problem:
            problems.append(problem)
        else:
            shifts.append(float(np.max(np.abs(shift))) if shift.size else 0.0)
    if shifts:
        return {"bias_shift_max": max(shifts)}
    return {"bias_correction": "; ".join(problems) or "not applied"}
