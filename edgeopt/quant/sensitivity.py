"""Which quantized node costs the most fidelity: local error growth measured on real activations.

For a node, the local error is the relative error of its output in the QDQ
model (against the float model) minus the largest relative error among the
activations it reads: what this node's own quantization added, not what it
inherited. Measured on a few samples, both models run in step a group of
activations and a chunk of samples at a time (edgeopt.graph.activations), the
squared errors summed as they come: memory stays bounded on big inputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.graph import activations
from edgeopt.graph.activations import Plan, Stream, footprint

_PASS_THROUGH = {"Relu", "Clip"}  # onnxruntime's QDQ quantizer absorbs these into the producer's output


def quantized_nodes(q_model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose every input comes out of a DequantizeLinear (they run in int8)."""
    dq_outputs = {n.output[0] for n in q_model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in q_model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(n.input)
            and all(i in dq_outputs for i in n.input if i)}


def _decoded(q_model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the output of the QuantizeLinear -> DequantizeLinear pair it goes through, if any."""
    dq = {n.input[0]: n.output[0] for n in q_model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.input[0]: dq[n.output[0]] for n in q_model.graph.node
            if n.op_type == "QuantizeLinear" and n.output[0] in dq}


def local_errors(float_model: onnx.ModelProto, q_model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                 candidates: list[str]) -> dict[str, float]:
    q_tensors = {o for n in q_model.graph.node for o in n.output} | {i.name for i in q_model.graph.input}
    inits = {i.name for i in float_model.graph.initializer}
    producer = {o: n for n in float_model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in float_model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in float_model.graph.node}

    def upstream(tensor: str, seen: set) -> set[str]:
        if not tensor or tensor in inits or tensor in seen:
            return set()
        seen.add(tensor)
        if tensor in q_tensors:
            return {tensor}
        node = producer.get(tensor)
        if node is None:
            return set()
        found = set()
        for i in node.input:
            found |= upstream(i, seen)
        return found

    outs, ups = {}, {}
    for name in candidates:
        node = by_name.get(name)
        if node is None or not node.output:
            continue
        out = node.output[0]
        while out not in q_tensors and len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in _PASS_THROUGH:
            out = consumers[out][0].output[0]
        if out not in q_tensors:
            continue
        outs[name] = out
        ups[name] = set().union(*[upstream(i, set()) for i in node.input]) if node.input else set()
    needed = sorted(set(outs.values()) | set().union(*ups.values()) if ups else set(outs.values()))
    graph_inputs = {i.name for i in float_model.graph.input}
    needed = [t for t in needed if t not in graph_inputs]
    if not needed:
        return {}
    # what consumers read in the QDQ model: the decoded tensor, not the raw one before QuantizeLinear
    # (a Relu absorbed into its producer clamps only there: the raw tensor still holds the negatives)
    decoded = _decoded(q_model)
    what = "measuring each node's quantization error"
    fp = footprint(float_model, feeds)
    budget = activations.ACTIVATION_BUDGET // 2  # two streams in step: together within one budget
    floats = Stream(float_model, needed, feeds, what=what, fp=fp, budget=budget)
    plan = floats.plan
    q_plan = Plan([[decoded.get(t, t) for t in g] for g in plan.groups], plan.chunk, plan.run, plan.need)
    quants = Stream(q_model, [decoded.get(t, t) for t in needed], feeds, what=what, fp=fp, plan_=q_plan)
    err2 = dict.fromkeys(needed, 0.0)
    ref2 = dict.fromkeys(needed, 0.0)
    for (group, f_pieces), (_, q_pieces) in zip(floats.groups(), quants.groups()):
        for f_piece, q_piece in zip(f_pieces, q_pieces):
            for t in group:  # float32 dot products (BLAS): a ranking, and a float64 copy of every
                ref = f_piece.values[t].reshape(-1).astype(np.float32, copy=False)  # activation doubled
                diff = q_piece.values[decoded.get(t, t)].reshape(-1).astype(np.float32, copy=False) - ref  # the time
                err2[t] += float(np.dot(diff, diff))
                ref2[t] += float(np.dot(ref, ref))
                del ref, diff
    rel = {t: float(np.sqrt(err2[t]) / max(np.sqrt(ref2[t]), 1e-12)) for t in needed}
    return {name: rel[outs[name]] - max([rel.get(u, 0.0) for u in ups[name]], default=0.0) for name in outs}
