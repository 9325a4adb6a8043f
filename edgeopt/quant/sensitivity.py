"""Which quantized node costs the most fidelity: local error growth measured on real activations.

For a node, the local error is the relative error of its output in the QDQ
model (against the float model) minus the largest relative error among the
activations it reads: what this node's own quantization added, not what it
inherited. Measured with one run of each model on a few samples.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.graph.activations import collect_activations

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
    fa = collect_activations(float_model, needed, feeds)
    # what consumers read in the QDQ model: the decoded tensor, not the raw one before QuantizeLinear
    # (a Relu absorbed into its producer clamps only there: the raw tensor still holds the negatives)
    decoded = _decoded(q_model)
    qa_raw = collect_activations(q_model, sorted({decoded.get(t, t) for t in needed}), feeds)
    qa = {t: qa_raw[decoded.get(t, t)] for t in needed}
    rel = {}
    for t in needed:
        ref = fa[t].astype(np.float64)
        rel[t] = float(np.linalg.norm(qa[t].astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-12))
    return {name: rel[outs[name]] - max([rel.get(u, 0.0) for u in ups[name]], default=0.0) for name in outs}
