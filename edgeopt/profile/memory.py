"""Activation memory: fusion groups and liveness over the execution order.

Fusion (decided here from the device's `fuses` list, never from markers in
the model): an op listed there whose activation input is the output of a
Conv / Gemm / MatMul (or of an op already fused into one) that has no other
consumer and is not a graph output, runs in that layer's epilogue. The
intermediate tensor is never written (it is "virtual"), and the fused op
moves nothing. QuantizeLinear after a layer always fuses (static int8 QDQ:
the layer writes int8), and DequantizeLinear on an activation is a view of
its int8 input. A gated activation, x * Sigmoid(x) or x * HardSigmoid(x)
(SiLU and HardSwish as exporters before opset 14 write them), is one
activation on every runtime (ncnn's Swish / HardSwish, onnxruntime's
QuickGelu, TFLite's HARD_SWISH): the gate runs inside the Mul, whatever the
device's `fuses` list says.

Liveness: a tensor is allocated when its producer runs and freed after its
last consumer (graph inputs from the start, graph outputs to the end). Views
(Reshape, Flatten, Squeeze, ...) share their input's buffer. The peak is the
largest sum of live activation bytes at any step (weights are counted apart).
A tensor whose size is unknown counts as `unknown_nbytes` (the profiler passes the
largest known activation: a conservative figure) and is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeopt.profile.counting import MAC_OPS, VIEW, Count
from edgeopt.profile.graphinfo import GraphInfo

ALWAYS_FUSED = {"QuantizeLinear"}
GATES = {"Sigmoid", "HardSigmoid"}  # x * gate(x): one activation (SiLU, HardSwish)


@dataclass
class Fusion:
    anchor_of: dict[int, int] = field(default_factory=dict)  # fused node -> anchor node
    members: dict[int, list[int]] = field(default_factory=dict)  # anchor -> [fused nodes]
    virtual: set[str] = field(default_factory=set)  # tensors never materialized
    alias: dict[str, str] = field(default_factory=dict)  # view output -> buffer it shares


def act_inputs(info: GraphInfo, node) -> list[str]:
    return [i for i in node.input if i and i not in info.const]


def decide_fusion(info: GraphInfo, order: list[int], counts: dict[int, Count], fuses,
                  runs: dict[int, int] | None = None) -> Fusion:
    """`runs`: times each node runs (Loop bodies); a node never fuses into one that runs a different number of times."""
    fusion = Fusion()
    fusable = set(fuses or ()) | ALWAYS_FUSED
    for idx in order:
        node = info.nodes[idx]
        count = counts[idx]
        inputs = act_inputs(info, node)
        if count.op_class == VIEW or (node.op_type == "DequantizeLinear" and inputs):
            if inputs and node.output and node.op_type not in ("Shape", "Size"):
                fusion.alias[node.output[0]] = fusion.alias.get(inputs[0], inputs[0])
            continue
        gate = _gate_of(info, idx, fusion)
        if gate is not None:
            fusion.anchor_of[gate] = idx
            fusion.members.setdefault(idx, []).append(gate)
            fusion.virtual.add(info.nodes[gate].output[0])
            continue
        if node.op_type not in fusable:
            continue
        for tensor in inputs:
            producer = info.producer.get(tensor)
            if producer is None or producer in info.const_nodes:
                continue
            anchor = fusion.anchor_of.get(producer)
            if anchor is None and info.nodes[producer].op_type in MAC_OPS:
                anchor = producer
            if anchor is None or (runs is not None and runs[anchor] != runs[idx]):
                continue
            if info.consumers.get(tensor, []) != [idx] or tensor in info.graph_outputs:
                continue
            fusion.anchor_of[idx] = anchor
            fusion.members.setdefault(anchor, []).append(idx)
            fusion.virtual.add(tensor)
            break
    return fusion


def _gate_of(info: GraphInfo, idx: int, fusion: Fusion) -> int | None:
    """The gate node of node `idx` when it is the Mul of x * gate(x) and the gate feeds nothing else."""
    node = info.nodes[idx]
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    a, b = node.input
    for gated, x in ((a, b), (b, a)):
        producer = info.producer.get(gated)
        if producer is None or producer in fusion.anchor_of:
            continue
        gate = info.nodes[producer]
        if (gate.op_type in GATES and gate.input and gate.input[0] == x
                and info.consumers.get(gated, []) == [idx] and gated not in info.graph_outputs):
            return producer
    return None


@dataclass
class Liveness:
    peak_bytes: int
    peak_step: int | None  # index into the execution order
    peak_tensors: list[str]
    unknown_tensors: list[str]  # activations whose size is unknown (each counted as unknown_nbytes)


def liveness(info: GraphInfo, order: list[int], virtual: set[str] = frozenset(),
             alias: dict[str, str] | None = None, fusion: Fusion | None = None,
             unknown_nbytes: int = 0) -> Liveness:
    """Peak of live activation bytes over the execution `order` (node indices).

    A fusion group runs as one step, at the position of its last member.
    """
    alias = alias or {}
    last = len(order) - 1
    position = {idx: step for step, idx in enumerate(order)}
    if fusion is not None:
        for anchor, members in fusion.members.items():
            group_step = max(position[m] for m in [anchor] + members)
            for m in [anchor] + members:
                position[m] = group_step
    birth: dict[str, int] = {}
    death: dict[str, int] = {}

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for name in info.graph_input_names:
        birth[name] = 0
        death[name] = 0
    for idx in order:
        step = position[idx]
        node = info.nodes[idx]
        for inp in node.input:
            if inp and inp not in info.const:
                r = root(inp)
                death[r] = max(death.get(r, step), step)
        for out in node.output:
            if out and out not in info.const and out not in virtual and root(out) == out:
                birth.setdefault(out, step)
                death[out] = max(death.get(out, step), step)
    for out in info.graph_outputs:
        r = root(out)
        if r in birth:
            death[r] = last
    sizes: dict[str, int] = {}
    unknown = []
    for name in birth:
        t = info.info(name)
        nbytes = t.nbytes if t is not None else None
        if nbytes is None:
            unknown.append(name)
            nbytes = unknown_nbytes
        sizes[name] = nbytes
    events: dict[int, list[str]] = {}
    for name, b in birth.items():
        events.setdefault(b, []).append(name)
    live: set[str] = set()
    current = 0
    peak, peak_step, peak_set = 0, None, []
    ends: dict[int, list[str]] = {}
    for name, d in death.items():
        if name in birth:
            ends.setdefault(d, []).append(name)
    for step in range(len(order)):
        for name in events.get(step, []):
            live.add(name)
            current += sizes[name]
        if current > peak or peak_step is None:
            peak, peak_step, peak_set = current, step, sorted(live, key=lambda n: -sizes[n])
        for name in ends.get(step, []):
            if name in live:
                live.discard(name)
                current -= sizes[name]
    return Liveness(peak, peak_step, peak_set, sorted(unknown))


def largest_activation(info: GraphInfo) -> tuple[int, int]:
    """(numel, bytes) of the largest activation whose size is known (graph inputs and outputs of
    non-constant nodes): the conservative stand-in for one whose size is not (at least 1 x 4 bytes)."""
    names = list(info.graph_input_names)
    names += [o for idx, node in enumerate(info.nodes) if idx not in info.const_nodes for o in node.output if o]
    best = (1, 4)
    for name in names:
        t = info.info(name)
        if name in info.const or t is None or t.numel is None or t.nbytes is None:
            continue
        if t.nbytes > best[1]:
            best = (t.numel, t.nbytes)
    return best
