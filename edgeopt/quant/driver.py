"""The loop every weight-compression pass runs, written once.

upgrade the opset (the preferred one, else the one the format needs) -> fold
BN first -> find the weights -> compress each one (the pass's own step) ->
store the biases (float16 / float32 / int8) -> check that onnxruntime loads
the result -> notes and a one-line summary. A pass supplies only what
differs: how one weight is compressed and how the summary starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.pass_types import NodeNote, PassContext, PassResult, Rewrite
from edgeopt.progress import tracked
from edgeopt.quant.biascorrect import correct_slot
from edgeopt.quant.biases import store_biases
from edgeopt.quant.means import input_means
from edgeopt.quant.opset import OpsetUpgradeError, verified_upgrade
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.prepare import fold_batchnorm_first
from edgeopt.quant.report import fmt_bytes
from edgeopt.quant.runtime import ort_load_error
from edgeopt.quant.select import node_label
from edgeopt.quant.weights import WeightSlot, find_weights


@dataclass
class Compressed:
    """One weight after the pass's own step."""

    out: ir.Value | None  # the decoded weight, read where the float weight was; None: the weight stays float
    nbytes: int  # stored bytes of the compressed form
    decoded: np.ndarray  # what the graph computes with, for the error figures
    reason: str  # the note, e.g. "W conv.w -> int8 per_channel"
    figures: dict = field(default_factory=dict)


@dataclass
class Plan:
    """What a pass's plan step (run once the weights are found, before any is compressed) decided."""

    note: str = ""  # added to the summary
    unchanged: str = ""  # non-empty: leave the model unchanged, for this reason
    notes: list[NodeNote] = field(default_factory=list)


def graph_opset(graph: ir.Graph) -> int:
    """The default-domain opset of the graph being rewritten (compress steps pick formats by it)."""
    return graph.opset_imports.get("", 1)


def _upgrade(model: onnx.ModelProto, target: int, preferred: int | None,
             ctx: PassContext) -> tuple[onnx.ModelProto, str]:
    """The model at the preferred opset if it can be upgraded there, else at target (or OpsetUpgradeError)."""
    if preferred and preferred > target:
        try:
            return verified_upgrade(model, preferred, ctx)
        except OpsetUpgradeError as exc:
            work, note = verified_upgrade(model, target, ctx)
            why = str(exc).split("(", 1)[-1].rstrip(")")
            return work, "; ".join(filter(None, [note, f"kept float32 scales: opset {preferred} not reachable ({why})"]))
    return verified_upgrade(model, target, ctx)


def run_weight_pass(model: onnx.ModelProto, params: WeightPassParams, ctx: PassContext, *, target_opset: int,
                    verb: str, compress: Callable[[ir.Graph, WeightSlot], Compressed],
                    summary_head: Callable[[int], str], build_int8_bias: Callable,
                    preferred_opset: int | None = None, fold: Rewrite | None = None,
                    plan: Callable[[ir.Model, list[WeightSlot]], Plan] | None = None) -> PassResult:
    """Run the shared loop; `verb` ("quantized", "clustered") names what happened to each weight.

    target_opset is what the format needs; preferred_opset (optional, higher) what its smaller
    variant needs (float16 scales): tried first, and compress sees the result through graph_opset.
    build_int8_bias decodes int8 biases (params.biases == "int8") the way the pass decodes weights.
    plan (optional) sees the prepared model and its weights before compress runs (a per-layer search);
    a weight compress leaves float (out None) keeps its float bias too.
    """
    try:
        work, upgrade_note = _upgrade(model, target_opset, preferred_opset, ctx)
    except OpsetUpgradeError as exc:
        return PassResult(model, False, [NodeNote("(model)", "", "skipped", str(exc))],
                          summary=f"left unchanged: {exc}")
    fold_note = ""
    if params.fold_batchnorm and fold is not None:  # fold: the fold_batchnorm pass, handed in by the caller
        work, fold_note = fold_batchnorm_first(work, ctx, fold)
    graph_model = to_ir(work)
    graph = graph_model.graph
    slots, notes = find_weights(graph, params.op_types, params.exclude, params.min_elements)
    if not slots:
        inner = sum(1 for n in notes if "inside a subgraph" in n.reason)
        return PassResult(model, False, notes, summary="no weight to compress; model unchanged" + (
            f" ({inner} weight nodes inside If/Loop/Scan subgraphs are not handled)" if inner else ""))
    planned = plan(graph_model, slots) if plan is not None else Plan()
    if planned.unchanged:
        return PassResult(model, False, notes + planned.notes, summary=f"left unchanged: {planned.unchanged}")
    notes.extend(planned.notes)
    means = {}
    if params.bias_correction and ctx.data:
        means = input_means(work, [n for s in slots for n in s.nodes], ctx.data)
    before = after = 0
    kept: list[str] = []  # labels of the nodes whose weight stays float: their biases stay float too
    for slot in tracked(slots, f"{verb} weights"):  # a bar for long fits (codebook on ResNet-50: 41 s)
        done = compress(graph, slot)
        if done.out is None:
            before += slot.array.nbytes
            after += slot.array.nbytes
            kept.extend(node_label(node) for node in slot.nodes)
            notes.extend(NodeNote(node_label(node), node.op_type, "kept", done.reason,
                                  {"elements": int(slot.array.size), **done.figures,
                                   "bytes_before": int(slot.array.nbytes), "bytes_after": int(slot.array.nbytes)})
                         for node in slot.nodes)
            continue
        slot.value.replace_all_uses_with(done.out)
        if slot.name in graph.initializers:
            graph.initializers.pop(slot.name)
        err = done.decoded - slot.array
        std = float(np.std(slot.array)) or 1.0
        max_abs = max(float(err.max(initial=0)), -float(err.min(initial=0)))
        np.square(err, out=err)  # in place: one weight-sized temporary, not three
        figures = {"elements": int(slot.array.size), **done.figures, "bytes_before": int(slot.array.nbytes),
                   "bytes_after": done.nbytes, "max_abs_error": max_abs,
                   "rel_rmse": float(np.sqrt(np.mean(err)) / std)}
        del err
        if means:
            figures.update(correct_slot(graph, slot, done.decoded, means))
        before += slot.array.nbytes
        after += done.nbytes
        notes.extend(NodeNote(node_label(node), node.op_type, verb, done.reason, figures) for node in slot.nodes)
    biases = store_biases(graph, params.biases, params.op_types, params.exclude + kept, notes, build_int8_bias)
    before, after = before + biases.bytes_before, after + biases.bytes_after
    result = to_proto(graph_model)
    problem = ort_load_error(result)
    if problem:
        notes.append(NodeNote("(model)", "", "skipped", f"onnxruntime cannot load the result: {problem}"))
        return PassResult(model, False, notes,
                          summary=f"left unchanged: onnxruntime cannot load the {verb} model ({problem})")
    small = sum(1 for n in notes if n.action == "skipped" and "min_elements" in n.reason)
    summary = (f"{summary_head(len(slots))}: {fmt_bytes(before)} -> {fmt_bytes(after)} "
               f"({before / max(after, 1):.2f}x); {biases.describe()}; {small} small "
               "weights stay float32")
    for note in (planned.note, upgrade_note, fold_note):
        if note:
            summary += f"; {note}"
    return PassResult(result, True, notes, summary=summary)
