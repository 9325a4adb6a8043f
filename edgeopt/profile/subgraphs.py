"""Nodes inside If / Loop / Scan bodies, inlined into one flat view of the graph for the profiler.

- If: a condition computable from constants (initializers, Constant values, shapes known
  statically) selects its branch; otherwise both branches are costed and the more expensive
  one is counted, and the choice is noted.
- Loop: the body runs M times when the trip count M is a constant (an upper bound when the
  loop condition can stop it earlier), else once; noted.
- Scan: the body runs once per slice of the first scan input along its scan axis.

Inlining renames, so counting, fusion and liveness work on the flat view unchanged: a body
output becomes the control node's output (the body writes it), Loop / Scan state inputs read
the control node's initial values, and per-iteration scan outputs are stacked by a synthetic
Concat. Body layers are named after where they live ("If_0/then/Conv_3"). The control node
itself stays as an output-less layer that carries the note.
"""

from __future__ import annotations

import dataclasses
import math
from collections import ChainMap
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from edgeopt.profile.counting import count_node, estimate_node
from edgeopt.profile.graphinfo import _NONDETERMINISTIC, GraphInfo, TensorInfo
from edgeopt.profile.memory import largest_activation

_MAX_EVAL_NUMEL = 4096  # constant conditions are small index computations; never evaluate weights
_MAX_TRIP = 1_000_000  # a larger Loop bound next to a condition is a "while" loop, not a count


@dataclass
class Flat:
    """The graph with the bodies the profiler counts inlined (`info` is the input's when there are none)."""

    info: GraphInfo
    names: dict[int, str]  # node index -> layer name
    runs: dict[int, int]  # node index -> times it runs per inference (> 1 inside a Loop / Scan)
    notes: dict[int, str]  # control node index -> the choice made
    control: set[int]  # control nodes (kept as output-less layers)
    inlined: set[int]  # body nodes
    choices: list[str]  # one line per control node


def _graphs(node: onnx.NodeProto) -> dict[str, list[onnx.GraphProto]]:
    out = {}
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out[a.name] = [a.g]
        elif a.type == AttributeProto.GRAPHS:
            out[a.name] = list(a.graphs)
    return out


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Flattener:
    def __init__(self, info: GraphInfo, parent: _Flattener | None = None):
        self.info = info
        self.nodes: list[onnx.NodeProto] = []
        self.names: list[str] = []
        self.runs: list[int] = []
        self.notes: dict[int, str] = {}
        self.control: set[int] = set()
        self.inlined: set[int] = set()
        self.const_nodes: set[int] = set()
        self.choices: list[str] = []
        # writes go to the first map / set: a fork (a branch costed on trial) can be thrown away
        if parent is None:
            self.tensors, self.inits = ChainMap({}, info.tensors), ChainMap({}, info.initializers)
            self.const, self.producer, self.values = [set(), info.const], ChainMap(), ChainMap()
            self.fallback_numel = largest_activation(info)[0]
        else:
            self.tensors, self.inits = parent.tensors.new_child(), parent.inits.new_child()
            self.const, self.producer = [set()] + parent.const, parent.producer.new_child()
            self.values, self.fallback_numel = parent.values.new_child(), parent.fallback_numel

    # -- constants ------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return any(name in layer for layer in self.const)

    def add_const(self, name: str) -> None:
        self.const[0].add(name)

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of a small constant tensor, or None when it is not one (or too deep to tell)."""
        if not name or not self.is_const(name) or depth > 50:
            return None
        if name in self.values:
            return self.values[name]
        result = None
        try:
            init = self.inits.get(name)
            node = self.producer.get(name)
            if init is not None:
                if math.prod(init.dims) <= _MAX_EVAL_NUMEL and init.data_location != TensorProto.EXTERNAL:
                    result = numpy_helper.to_array(init)
            elif node is not None and node.op_type == "Shape":
                t = self.tensors.get(node.input[0])
                if t is not None and t.shape is not None:
                    start, end = _attr(node, "start", 0), _attr(node, "end", None)
                    result = np.array(t.shape[start:end], dtype=np.int64)
            elif node is not None and not _graphs(node):
                feeds = {}
                for inp in node.input:
                    if inp:
                        v = self.value(inp, depth + 1)
                        if v is None or v.size > _MAX_EVAL_NUMEL:
                            return None
                        feeds[inp] = v
                from onnx.reference import ReferenceEvaluator  # slow import, rarely needed
                outs = ReferenceEvaluator(node).run(None, feeds)
                result = np.asarray(outs[list(node.output).index(name)])
        except Exception:  # an op the reference runtime cannot evaluate: not a known constant
            result = None
        self.values.maps[0][name] = result
        return result

    # -- emitting -------------------------------------------------------------------------------
    def emit(self, node: onnx.NodeProto, name: str, runs: int, *, inlined: bool, const: bool | None = None) -> int:
        idx = len(self.nodes)
        self.nodes.append(node)
        self.names.append(name)
        self.runs.append(runs)
        if inlined:
            self.inlined.add(idx)
        for out in node.output:
            if out:
                self.producer[out] = node
        if const is None:
            const = self._const_rule(node)
        if const:
            self.const_nodes.add(idx)
            for out in node.output:
                if out:
                    self.add_const(out)
        return idx

    def _const_rule(self, node: onnx.NodeProto) -> bool:
        """graphinfo.analyze's rule, for body nodes: Constant, Shape of a static shape, or an
        ordinary deterministic op whose inputs are all constant."""
        real = [i for i in node.input if i]
        if node.op_type == "Constant":
            return True
        if node.op_type == "Shape" and real:
            t = self.tensors.get(real[0])
            return t is not None and t.shape is not None
        return bool(real) and not _graphs(node) and node.op_type not in _NONDETERMINISTIC \
            and node.domain in ("", "ai.onnx") and all(self.is_const(i) for i in real)

    def alias(self, src: str, dst: str) -> None:
        """dst is written by the branch as src: src's shape is the one this branch gives it (the outer
        shape may come from a run that took the other branch)."""
        s = self.tensors.get(src)
        if s is not None and s.shape is not None:
            self.tensors[dst] = TensorInfo(dst, s.elem_type, list(s.shape))

    def ops(self) -> int:
        """Ops of everything emitted here (uncounted nodes estimated): how expensive a branch is."""
        total = 0
        for idx, node in enumerate(self.nodes):
            if idx in self.const_nodes or idx in self.control:
                continue
            ins = [self.tensors.get(i) if i else None for i in node.input]
            outs = [self.tensors.get(o) if o else None for o in node.output]
            count = count_node(node, ins, outs)
            if not count.counted:
                count = estimate_node(node, ins, outs, count, self.fallback_numel)
            total += (count.ops or 0) * self.runs[idx]
        return total

    # -- walking --------------------------------------------------------------------------------
    def walk(self, nodes, rename: dict[str, str], prefix: str, runs: int, top: bool = False) -> None:
        for i, node in enumerate(nodes):
            name = (prefix + "/" if prefix else "") + (node.name or f"{node.op_type}_{i}")
            ins = [rename.get(x, x) for x in node.input]
            outs = [rename.get(x, x) for x in node.output]
            graphs = _graphs(node)
            if not graphs:
                if ins != list(node.input) or outs != list(node.output):
                    copy = onnx.NodeProto()
                    copy.CopyFrom(node)
                    del copy.input[:], copy.output[:]
                    copy.input.extend(ins)
                    copy.output.extend(outs)
                    node = copy
                const = (i in self.info.const_nodes) if top else None
                self.emit(node, name, runs, inlined=not top, const=const)
                if not top and node.op_type == "Constant" and node.output:
                    t = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR),
                             None)
                    if t is not None:
                        self.tensors[node.output[0]] = TensorInfo(node.output[0], t.data_type, list(t.dims))
                continue
            if node.op_type == "If" and "then_branch" in graphs and "else_branch" in graphs:
                self._if(node, name, ins, outs, graphs, rename, runs, top)
            elif node.op_type == "Loop" and "body" in graphs:
                self._loop(node, name, ins, outs, graphs["body"][0], rename, runs, top)
            elif node.op_type == "Scan" and "body" in graphs and len(node.input) >= int(_attr(node, "num_scan_inputs", 1)):
                self._scan(node, name, ins, outs, graphs["body"][0], rename, runs, top)
            else:  # another op with a graph attribute: costed as an unknown op, body not entered
                copy = onnx.helper.make_node(node.op_type, ins, outs, domain=node.domain)
                self.emit(copy, name, runs, inlined=not top, const=False)

    def _control(self, name: str, op: str, ins: list[str], runs: int, top: bool, note: str) -> int:
        idx = self.emit(onnx.helper.make_node(op, [i for i in ins if i], []), name, runs, inlined=not top, const=False)
        self.control.add(idx)
        self.notes[idx] = note
        self.choices.append(f"{name}: {note}")
        return idx

    def _body(self, body: onnx.GraphProto, rename: dict[str, str], prefix: str, runs: int,
              out_names: list[str]) -> None:
        """Inline `body` with its outputs written under out_names (an Identity where the body
        passes a value through that it does not compute)."""
        for init in body.initializer:
            self.inits[init.name] = init
            self.tensors[init.name] = TensorInfo(init.name, init.data_type, list(init.dims))
            self.add_const(init.name)
        computed = {o for n in body.node for o in n.output if o}
        child = dict(rename)
        passthrough = []
        for vi, outer in zip(body.output, out_names):
            if not outer:
                continue
            if vi.name in computed and vi.name not in child:
                child[vi.name] = outer
                self.alias(vi.name, outer)
            else:
                passthrough.append((vi.name, outer))
        self.walk(body.node, child, prefix, runs)
        for k, (src, outer) in enumerate(passthrough):
            src = child.get(src, src)
            self.alias(src, outer)
            self.emit(onnx.helper.make_node("Identity", [src], [outer]), f"{prefix}/output_{k}", runs, inlined=True)

    def _if(self, node, name, ins, outs, graphs, rename, runs, top) -> None:
        branches = {"then": graphs["then_branch"][0], "else": graphs["else_branch"][0]}
        cond = self.value(ins[0]) if ins else None
        observed = self.info.observed.get(ins[0]) if ins else None  # top-level conditions only
        if cond is not None and cond.size == 1:
            pick = "then" if bool(cond.reshape(-1)[0]) else "else"
            note = f"condition is constant {pick == 'then'}: {pick} branch counted"
        elif observed is not None:  # decided by the inputs (a sample rate): the branch they take
            pick = "then" if observed else "else"
            note = f"condition is {observed} on the given inputs: {pick} branch counted"
        else:
            cost = {}
            for key, g in branches.items():
                trial = _Flattener(self.info, self)
                trial._body(g, rename, f"{name}/{key}", 1, outs)
                cost[key] = trial.ops()
            pick = "then" if cost["then"] >= cost["else"] else "else"
            other = "else" if pick == "then" else "then"
            note = (f"condition not constant: {pick} branch counted, the more expensive "
                    f"({cost[pick]:,} vs {cost[other]:,} ops)")
        self._control(name, "If", ins[:1], runs, top, note)
        self._body(branches[pick], rename, f"{name}/{pick}", runs, outs)

    def _loop(self, node, name, ins, outs, body, rename, runs, top) -> None:
        ins = ins + [""] * (2 - len(ins))
        trip_v, cond_v = self.value(ins[0]), self.value(ins[1])
        trip = int(trip_v.reshape(-1)[0]) if trip_v is not None and trip_v.size == 1 else None
        stops_early = bool(ins[1]) and not (cond_v is not None and cond_v.size == 1 and bool(cond_v.reshape(-1)[0]))
        if trip is not None and (trip <= _MAX_TRIP or not stops_early):
            times = max(trip, 0)
            note = f"trip count {trip}: body counted {times} times" + (
                " (an upper bound: the loop condition may stop it earlier)" if stops_early else "")
        else:
            times, note = 1, "trip count not constant: body counted once"
        self._control(name, "Loop", ins, runs, top, note)
        n_state = len(body.input) - 2
        child = dict(rename)
        for k, vi in enumerate(body.input[:2]):  # iteration number, condition: small scalars
            synthetic = f"{name}/{'iter' if k == 0 else 'cond'}"
            child[vi.name] = synthetic
            self.tensors[synthetic] = TensorInfo(synthetic, TensorProto.INT64 if k == 0 else TensorProto.BOOL, [])
            self.add_const(synthetic)
        for k, vi in enumerate(body.input[2:]):
            if 2 + k < len(ins) and ins[2 + k]:
                child[vi.name] = ins[2 + k]
        self._stacked(body, child, f"{name}/body", runs * times, runs, outs, skip=1, n_state=n_state)

    def _scan(self, node, name, ins, outs, body, rename, runs, top) -> None:
        n_scan = int(_attr(node, "num_scan_inputs", 1))
        n_state = len(ins) - n_scan
        axes = list(_attr(node, "scan_input_axes", None) or [0] * n_scan)
        first = self.tensors.get(ins[n_state]) if n_scan else None
        times = None
        if first is not None and first.shape is not None and n_scan:
            times = first.shape[axes[0] % len(first.shape)]
        note = f"body counted {times} times (scan length)" if times is not None else \
            "scan length unknown: body counted once"
        self._control(name, "Scan", ins, runs, top, note)
        child = dict(rename)
        for k, vi in enumerate(body.input):
            if k < n_state:
                child[vi.name] = ins[k]
                continue
            src = self.tensors.get(ins[k]) if k < len(ins) else None
            if src is not None and src.shape is not None and self.tensors.get(vi.name) is None:
                axis = axes[k - n_state] % len(src.shape)
                self.tensors[vi.name] = TensorInfo(vi.name, src.elem_type, src.shape[:axis] + src.shape[axis + 1:])
        self._stacked(body, child, f"{name}/body", runs * (times or 1), runs, outs, skip=0, n_state=n_state)

    def _stacked(self, body, child, prefix, body_runs, runs, outs, skip, n_state) -> None:
        """Inline a Loop / Scan body: state outputs under the control node's names, each
        per-iteration scan output stacked into the control node's output by a Concat."""
        state_outs = list(outs[:n_state]) + [""] * max(0, n_state - len(outs))
        scan_body = [vi.name for vi in body.output[skip + n_state:]]
        self._body(body, child, prefix, body_runs, [""] * skip + state_outs + [""] * len(scan_body))
        for j, src in enumerate(scan_body):
            outer = outs[n_state + j] if n_state + j < len(outs) else ""
            if outer:
                src = child.get(src, src)
                self.emit(onnx.helper.make_node("Concat", [src], [outer], axis=0), f"{prefix}/stack_{j}", runs,
                          inlined=True, const=False)


def flatten(info: GraphInfo) -> Flat:
    """`info` with the If / Loop / Scan bodies the profiler counts inlined."""
    nodes = info.nodes
    if not any(_graphs(n) for n in nodes):
        names = {i: n.name or f"{n.op_type}_{i}" for i, n in enumerate(nodes)}
        return Flat(info, names, {i: 1 for i in range(len(nodes))}, {}, set(), set(), [])
    f = _Flattener(info)
    f.walk(nodes, {}, "", 1, top=True)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for idx, node in enumerate(f.nodes):
        for out in node.output:
            if out:
                producer[out] = idx
        for inp in node.input:
            if inp:
                consumers.setdefault(inp, []).append(idx)
    const = set(info.const) | f.const[0]
    flat = dataclasses.replace(info, nodes=f.nodes, tensors={**info.tensors, **f.tensors.maps[0]},
                               initializers={**info.initializers, **f.inits.maps[0]}, const=const,
                               const_nodes=set(f.const_nodes), producer=producer, consumers=consumers)
    return Flat(flat, dict(enumerate(f.names)), dict(enumerate(f.runs)), f.notes, f.control, f.inlined, f.choices)
