"""fuse_relu6: every ReLU6 form becomes one Clip(0, 6); hard-swish forms become HardSwish."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array, opset, to_ir, to_proto
from edgeopt.graph.rewire import (RankLookup, attr, broadcasts_into, new_value, only_consumer, other_input,
                                  replace_value, scalar_const)
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register

FUSED_KEY = "edgeopt.fused_with"
ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATIONS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh", "PRelu", "Elu",
               "Selu", "Softplus", "Mish", "Gelu")
HARDSWISH_OPSET = 14
CLIP_INPUTS_OPSET = 11  # Clip takes min/max as inputs from opset 11, as attributes before


@dataclass
class Params:
    hardswish: bool = param(
        True,
        "rewrite x*HardSigmoid(x) and x*Clip(x+3, 0, 6)/6 as one HardSwish (opset 14+; "
        "left alone with a note below)")
    mark_fused: bool = param(
        True,
        f"set node metadata {FUSED_KEY}=<conv name> on an activation that directly follows a "
        "Conv/Gemm/MatMul (for readers; the profiler decides fusion itself)")


@dataclass
class _Clamp:
    """A node read as clamp(x, lo, hi); None bounds are open."""

    node: ir.Node
    x: ir.Value
    lo: float | None
    hi: float | None
    dtype: np.dtype | None  # of a constant bound, when there is one


@register
class FuseRelu6(Pass):
    name = "fuse_relu6"
    summary = "Turn every ReLU6 form into one Clip(0, 6) and hard-swish forms into HardSwish"
    description = (
        "A chain of clamps (Relu, Max(x, c), Min(x, c), Clip) whose bounds meet, such as Relu -> Min(6), "
        "Max(0) -> Min(6), Min(6) -> Max(0) or Relu -> Clip(0, 6), becomes one Clip: with scalar min/max "
        "initializers from opset 11, with min/max attributes below. Clips whose bounds are Constant "
        "nodes get initializer bounds. At opset 14+, x * HardSigmoid(x) (alpha 1/6, beta 0.5) and "
        "x * Clip(x + 3, 0, 6) / 6 (any order of the Mul and the Div/Mul by 1/6) become HardSwish. "
        "An activation reading a Conv/Gemm/MatMul output that nothing else reads is marked with "
        f"node metadata {FUSED_KEY}; the profiler fuses such pairs on devices that run them as one kernel."
    )
    lossless = True
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        ir_model = to_ir(model)
        graph = ir_model.graph
        version = opset(ir_model)
        rewriter = _Rewriter(graph, version, RankLookup(model))
        for node in list(graph):
            if node.graph is graph:
                rewriter.fuse_clamps(node)
        if params.hardswish:
            for node in list(graph):
                if node.graph is graph:
                    rewriter.fuse_hardswish(node)
        marked = _mark_fused(graph) if params.mark_fused else 0
        counts = rewriter.counts
        modified = counts["clip"] + counts["hardswish"] + counts["lifted"] + marked > 0
        out = to_proto(ir_model) if modified else model
        parts = [f"{counts['clip']} clamp chains -> Clip ({counts['removed']} nodes removed)",
                 f"{counts['hardswish']} HardSwish"]
        if counts["hardswish_skipped"]:
            parts.append(f"{counts['hardswish_skipped']} hard-swish forms left (opset {version} < 14)")
        if params.mark_fused:
            parts.append(f"{marked} activations marked fused")
        return PassResult(out, modified, rewriter.notes, ", ".join(parts))


class _Rewriter:
    def __init__(self, graph: ir.Graph, version: int, ranks: RankLookup):
        self.graph = graph
        self.ranks = ranks
        self.version = version
        self.notes: list[NodeNote] = []
        self.counts = {"clip": 0, "removed": 0, "hardswish": 0, "hardswish_skipped": 0, "lifted": 0}
        self._bounds: dict[tuple[str, float], ir.Value] = {}

    # -- clamps -------------------------------------------------------------------------------

    def as_clamp(self, node: ir.Node) -> _Clamp | None:
        """The node as clamp(x, lo, hi), or None when it is not a clamp with constant bounds."""
        if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            return None
        op = node.op_type
        if op == "Relu":
            return _Clamp(node, node.inputs[0], 0.0, None, None)
        if op == "Clip":
            if self.version < CLIP_INPUTS_OPSET:
                if self.version < 6:
                    return None
                lo, hi = attr(node, "min"), attr(node, "max")
                return _Clamp(node, node.inputs[0], lo, hi, None)
            bounds, dtype = [], None
            for i in (1, 2):
                value = node.inputs[i] if len(node.inputs) > i else None
                if value is None:
                    bounds.append(None)
                    continue
                number = scalar_const(value)
                if number is None or const_array(value).size != 1:
                    return None
                dtype = const_array(value).dtype
                bounds.append(number)
            return _Clamp(node, node.inputs[0], bounds[0], bounds[1], dtype)
        if op in ("Max", "Min") and len(node.inputs) == 2 and self.version >= 8:  # broadcasting from opset 8
            for x, c in (node.inputs, reversed(node.inputs)):
                number = scalar_const(c)
                if (number is not None and x is not None and const_array(x) is None
                        and broadcasts_into(c, self.ranks.rank(x))):
                    dtype = const_array(c).dtype
                    return _Clamp(node, x, number, None, dtype) if op == "Max" else _Clamp(node, x, None, number, dtype)
        return None

    def fuse_clamps(self, node: ir.Node) -> None:
        """Merge `node` with the clamp before it, if both are clamps and the first feeds only the second."""
        second = self.as_clamp(node)
        if second is None:
            return
        producer = second.x.producer()
        first = self.as_clamp(producer) if producer is not None else None
        if first is None or not only_consumer(second.x, node):
            if node.op_type == "Clip":
                self.lift_bounds(second)
            return
        lo = _tighter(first.lo, second.lo, max)
        hi = _tighter(first.hi, second.hi, min)
        if lo is not None and hi is not None and lo > hi:
            return  # bounds that do not meet: the chain is a constant, not a clamp
        if lo is None and hi is None:
            return
        dtype = next((d for d in (first.dtype, second.dtype) if d is not None),
                     first.x.dtype.numpy() if first.x.dtype is not None else None)
        if dtype is None and self.version >= CLIP_INPUTS_OPSET:
            self.notes.append(NodeNote(node.name or node.op_type, node.op_type, "skipped",
                                       "the element type of the clamped tensor is unknown"))
            return
        clip = self.make_clip(first.x, lo, hi, dtype, name=first.node.name or node.name or "clip")
        self.graph.insert_after(node, clip)
        replace_value(node.outputs[0], clip.outputs[0])
        self.graph.remove([node, first.node], safe=True)
        self.counts["clip"] += 1
        self.counts["removed"] += 1
        form = f"{_describe(first)} -> {_describe(second)}"
        self.notes.append(NodeNote(clip.name, "Clip", "fused", f"{form} became Clip({_fmt(lo)}, {_fmt(hi)})",
                                   {"min": lo, "max": hi, "nodes_removed": 1}))

    def lift_bounds(self, clamp: _Clamp) -> None:
        """A Clip whose min/max come from Constant nodes reads shared initializers instead."""
        node = clamp.node
        if self.version < CLIP_INPUTS_OPSET or clamp.dtype is None:
            return
        for i, number in ((1, clamp.lo), (2, clamp.hi)):
            value = node.inputs[i] if len(node.inputs) > i else None
            if value is not None and not value.is_initializer():
                node.replace_input_with(i, self.bound(number, clamp.dtype, "min" if i == 1 else "max"))
                self.counts["lifted"] += 1

    def make_clip(self, x: ir.Value, lo: float | None, hi: float | None, dtype, name: str) -> ir.Node:
        out = new_value(self.graph, f"{x.name}_clip", x)
        if self.version < CLIP_INPUTS_OPSET:
            attrs = []
            if lo is not None:
                attrs.append(ir.AttrFloat32("min", lo))
            if hi is not None:
                attrs.append(ir.AttrFloat32("max", hi))
            return ir.Node("", "Clip", [x], attrs, name=name, outputs=[out])
        inputs = [x, self.bound(lo, dtype, "min") if lo is not None else None,
                  self.bound(hi, dtype, "max") if hi is not None else None]
        while inputs[-1] is None:
            inputs.pop()
        return ir.Node("", "Clip", inputs, name=name, outputs=[out])

    def bound(self, number: float, dtype, kind: str) -> ir.Value:
        """One shared scalar initializer per (dtype, value)."""
        dtype = np.dtype(dtype)
        key = (dtype.str, number)
        if key not in self._bounds:
            label = f"{number:g}".replace("-", "m").replace(".", "p")
            self._bounds[key] = add_initializer(self.graph, f"clip_{kind}_{label}_{dtype.name}",
                                                np.array(number, dtype=dtype))
        return self._bounds[key]

    # -- hard swish -------------------------------------------------------------------------------

    def fuse_hardswish(self, node: ir.Node) -> None:
        match = self.match_hardswish(node)
        if match is None:
            return
        x, last, removed, form = match
        label = last.name or last.op_type
        if self.version < HARDSWISH_OPSET:
            self.counts["hardswish_skipped"] += 1
            self.notes.append(NodeNote(label, last.op_type, "skipped",
                                       f"{form} is a hard swish, but HardSwish needs opset {HARDSWISH_OPSET} "
                                       f"and the model is opset {self.version}"))
            return
        hs = ir.Node("", "HardSwish", [x], name=last.name or "hardswish",
                     outputs=[new_value(self.graph, f"{x.name}_hardswish", last.outputs[0])])
        self.graph.insert_after(last, hs)
        replace_value(last.outputs[0], hs.outputs[0])
        self.graph.remove(removed, safe=True)
        self.counts["hardswish"] += 1
        self.notes.append(NodeNote(hs.name, "HardSwish", "fused", f"{form} became HardSwish",
                                   {"nodes_removed": len(removed) - 1}))

    def match_hardswish(self, node: ir.Node):
        """(x, last node, nodes to remove, description) when `node` starts a hard-swish form."""
        if node.op_type == "HardSigmoid":
            return self._match_hardsigmoid(node)
        if node.op_type == "Add":
            return self._match_clip_form(node)
        return None

    def _match_hardsigmoid(self, hsig: ir.Node):
        alpha, beta = float(attr(hsig, "alpha", 0.2)), float(attr(hsig, "beta", 0.5))
        if not (math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6)):
            return None
        x, out = hsig.inputs[0], hsig.outputs[0]
        mul = _sole_reader(out)
        if mul is None or mul.op_type != "Mul" or other_input(mul, out) is not x:
            return None
        return x, mul, [mul, hsig], "x * HardSigmoid(x)"

    def _match_clip_form(self, add: ir.Node):
        if len(add.inputs) != 2:
            return None
        x = None
        for a, b in (add.inputs, reversed(add.inputs)):
            if scalar_const(b) == 3.0 and const_array(a) is None and broadcasts_into(b, self.ranks.rank(a)):
                x = a
        if x is None:
            return None
        clip = _sole_reader(add.outputs[0])
        clamp = self.as_clamp(clip) if clip is not None else None
        if clamp is None or clamp.node.op_type != "Clip" or (clamp.lo, clamp.hi) != (0.0, 6.0):
            return None
        c = clip.outputs[0]
        rank = self.ranks.rank(x)
        step = _sole_reader(c)
        if step is None:
            return None
        if step.op_type == "Mul" and other_input(step, c) is x:  # (x * clip) / 6
            div = _sole_reader(step.outputs[0])
            if div is not None and _is_div6(div, step.outputs[0], rank):
                return x, div, [div, step, clip, add], "x * Clip(x + 3, 0, 6) / 6"
            return None
        if _is_div6(step, c, rank):  # x * (clip / 6)
            mul = _sole_reader(step.outputs[0])
            if mul is not None and mul.op_type == "Mul" and other_input(mul, step.outputs[0]) is x:
                return x, mul, [mul, step, clip, add], "x * (Clip(x + 3, 0, 6) / 6)"
        return None


def _is_div6(node: ir.Node, value: ir.Value, rank: int | None) -> bool:
    """node computes value / 6 (Div by 6 or Mul by 1/6) and keeps value's shape (of `rank`)."""
    if len(node.inputs) != 2:
        return False
    if node.op_type == "Div" and node.inputs[0] is value:
        c = node.inputs[1]
        return scalar_const(c) == 6.0 and broadcasts_into(c, rank)
    if node.op_type == "Mul":
        c = other_input(node, value)
        number = scalar_const(c) if c is not None else None
        return number is not None and math.isclose(number, 1 / 6, rel_tol=1e-6) and broadcasts_into(c, rank)
    return False


def _sole_reader(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if value.is_graph_output() or not uses or any(u.node is not uses[0].node for u in uses):
        return None
    return uses[0].node


def _tighter(a: float | None, b: float | None, pick) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


def _fmt(number: float | None) -> str:
    return "-" if number is None else f"{number:g}"


def _describe(clamp: _Clamp) -> str:
    op = clamp.node.op_type
    if op == "Relu":
        return "Relu"
    if op == "Max":
        return f"Max({_fmt(clamp.lo)})"
    if op == "Min":
        return f"Min({_fmt(clamp.hi)})"
    return f"Clip({_fmt(clamp.lo)}, {_fmt(clamp.hi)})"


def _mark_fused(graph: ir.Graph) -> int:
    """Tag activations that read a Conv/Gemm/MatMul output nobody else reads; returns how many."""
    marked = 0
    for node in graph:
        if node.op_type not in ACTIVATIONS or not node.inputs or node.inputs[0] is None:
            continue
        producer = node.inputs[0].producer()
        if producer is None or producer.op_type not in ANCHORS or not only_consumer(node.inputs[0], node):
            continue
        anchor = producer.name or producer.outputs[0].name
        if node.metadata_props.get(FUSED_KEY) != anchor:
            node.metadata_props[FUSED_KEY] = anchor
            marked += 1
    return marked
