"""The loop every weight-compression pass runs, written once.

upgrade the opset -> fold BN first -> find the weights -> compress each one
(the pass's own step) -> optional extra step (int8 biases) -> check that
onnxruntime loads the result -> notes and a one-line summary. A pass supplies
only what differs: how one weight is compressed and how the summary starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.passes.base import NodeNote, PassContext, PassResult
from edgeopt.quant.biascorrect import correct_slot, input_means
from edgeopt.quant.opset import OpsetUpgradeError, ensure_opset
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.prepare import fold_batchnorm_first
from edgeopt.quant.report import fmt_bytes
from edgeopt.quant.runtime import ort_load_error
from edgeopt.quant.select import node_label
from edgeopt.quant.weights import WeightSlot, find_weights, float_bias_bytes


@dataclass
class Compressed:
    """One weight after the pass's own step."""

    out: ir.Value  # the decoded weight, read where the float weight was
    nbytes: int  # stored bytes of the compressed form
    decoded: np.ndarray  # what the graph computes with, for the error figures
    reason: str  # the note, e.g. "W conv.w -> int8 per_channel"
    figures: dict = field(default_factory=dict)


@dataclass
class Extra:
    """What an extra step after the weights (e.g. int8 biases) added."""

    bytes_before: int = 0
    bytes_after: int = 0
    count: int = 0


def run_weight_pass(model: onnx.ModelProto, params: WeightPassParams, ctx: PassContext, *, target_opset: int,
                    verb: str, compress: Callable[[ir.Graph, WeightSlot], Compressed],
                    summary_head: Callable[[int, Extra], str],
                    extra: Callable[[ir.Graph, list[NodeNote]], Extra] | None = None) -> PassResult:
    """Run the shared loop; `verb` ("quantized", "clustered") names what happened to each weight."""
    try:
        work, upgrade_note = ensure_opset(model, target_opset)
    except OpsetUpgradeError as exc:
        return PassResult(model, False, [NodeNote("(model)", "", "skipped", str(exc))],
                          summary=f"left unchanged: {exc}")
    fold_note = ""
    if params.fold_batchnorm:
        work, fold_note = fold_batchnorm_first(work, ctx)
    graph_model = to_ir(work)
    graph = graph_model.graph
    slots, notes = find_weights(graph, params.op_types, params.exclude, params.min_elements)
    if not slots:
        return PassResult(model, False, notes, summary="no weight to compress; model unchanged")
    means = {}
    if params.bias_correction and ctx.data:
        means = input_means(work, [n for s in slots for n in s.nodes], ctx.data)
    before = after = 0
    for slot in slots:
        done = compress(graph, slot)
        slot.value.replace_all_uses_with(done.out)
        if slot.name in graph.initializers:
            graph.initializers.pop(slot.name)
        err = done.decoded - slot.array
        std = float(np.std(slot.array)) or 1.0
        figures = {"elements": int(slot.array.size), **done.figures, "bytes_before": int(slot.array.nbytes),
                   "bytes_after": done.nbytes, "max_abs_error": float(np.max(np.abs(err))),
                   "rel_rmse": float(np.sqrt(np.mean(err ** 2)) / std)}
        if means:
            figures.update(correct_slot(graph, slot, done.decoded, means))
        before += slot.array.nbytes
        after += done.nbytes
        notes.extend(NodeNote(node_label(node), node.op_type, verb, done.reason, figures) for node in slot.nodes)
    added = extra(graph, notes) if extra else Extra()
    before, after = before + added.bytes_before, after + added.bytes_after
    result = to_proto(graph_model)
    problem = ort_load_error(result)
    if problem:
        notes.append(NodeNote("(model)", "", "skipped", f"onnxruntime cannot load the result: {problem}"))
        return PassResult(model, False, notes,
                          summary=f"left unchanged: onnxruntime cannot load the {verb} model ({problem})")
    n_bias, bias_bytes = float_bias_bytes(graph)
    small = sum(1 for n in notes if n.action == "skipped" and "min_elements" in n.reason)
    summary = (f"{summary_head(len(slots), added)}: {fmt_bytes(before)} -> {fmt_bytes(after)} "
               f"({before / max(after, 1):.2f}x); {n_bias} biases ({fmt_bytes(bias_bytes)}) and {small} small "
               "weights stay float")
    for note in (upgrade_note, fold_note):
        if note:
            summary += f"; {note}"
    return PassResult(result, True, notes, summary=summary)
