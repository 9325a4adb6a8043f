"""fold_batchnorm: BatchNormalization folded into the Conv / ConvTranspose / Gemm / MatMul before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array, opset, to_ir, to_proto
from edgeopt.graph.rewire import RankLookup, attr, new_value, replace_value
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register

FOLD_INTO = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Params:
    when_shared: Literal["mul_add", "copy", "skip"] = param(
        "mul_add",
        "what to do when the producer's output has other readers besides the BN: "
        "mul_add = turn the BN into a per-channel Mul+Add (no extra compute); "
        "copy = fold into a copy of the producer (the other readers keep the original; costs its MACs twice); "
        "skip = leave the BN")
    decompose_unfoldable: bool = param(
        True,
        "a BN with no foldable producer (after an Add, at a graph input, after a Conv whose weight "
        "is not a constant) becomes a per-channel Mul+Add; false leaves it as a BN")


@dataclass
class _Stats:
    """The BN as an affine map per channel: y = x * scale + shift (float64)."""

    scale: np.ndarray
    shift: np.ndarray


@register
class FoldBatchnorm(Pass):
    name = "fold_batchnorm"
    summary = "Fold BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul that produces its input"
    description = (
        "An inference-mode BatchNormalization is a per-channel affine map, y = x*s + t with "
        "s = gamma/sqrt(var+eps), t = beta - mean*s. When its input comes from a Conv, ConvTranspose "
        "(group-aware, channel axis 1 of the weight), Gemm (transB respected) or a MatMul of a rank-2 "
        "input by a constant [K,N] weight, s is multiplied into the weight's output-channel axis and t "
        "into the bias (a new bias, or an Add after a MatMul). The folded weights are computed in "
        "float64 and stored in the weight's dtype, always as new initializers, so a weight shared "
        "with another node is never altered. A BN that has no foldable producer becomes a Mul+Add "
        "with per-channel constants. Training-mode BNs (training_mode=1, is_test=0) and "
        "per-activation BNs (spatial=0) are skipped with the reason."
    )
    lossless = True
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        ir_model = to_ir(model)
        graph = ir_model.graph
        version = opset(ir_model)
        ranks = RankLookup(model)
        notes: list[NodeNote] = []
        counts = {"folded": 0, "decomposed": 0, "skipped": 0}
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            label = bn.name or bn.outputs[0].name
            stats, reason = _bn_stats(bn)
            if stats is None:
                notes.append(NodeNote(label, bn.op_type, "skipped", reason))
                counts["skipped"] += 1
                continue
            outcome = _fold(graph, bn, stats, params, version, ranks)
            figures = {"channels": int(stats.scale.size)}
            if outcome.kind == "folded":
                notes.append(NodeNote(label, bn.op_type, "folded", outcome.reason, figures))
                counts["folded"] += 1
                continue
            if not params.decompose_unfoldable or (outcome.kind == "shared" and params.when_shared == "skip"):
                notes.append(NodeNote(label, bn.op_type, "skipped", outcome.reason))
                counts["skipped"] += 1
                continue
            problem = _decompose(graph, bn, stats, ranks)
            if problem:
                notes.append(NodeNote(label, bn.op_type, "skipped", f"{outcome.reason}; {problem}"))
                counts["skipped"] += 1
            else:
                notes.append(NodeNote(label, bn.op_type, "decomposed", f"became Mul+Add: {outcome.reason}", figures))
                counts["decomposed"] += 1
        modified = counts["folded"] + counts["decomposed"] > 0
        out = to_proto(ir_model) if modified else model
        total = sum(counts.values())
        summary = (f"folded {counts['folded']} of {total} BatchNormalization"
                   + (f", {counts['decomposed']} became Mul+Add" if counts["decomposed"] else "")
                   + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))
        return PassResult(out, modified, notes, summary if total else "no BatchNormalization found")


def _bn_stats(bn: ir.Node) -> tuple[_Stats | None, str]:
    """The BN's per-channel scale and shift, or None and the reason it cannot be folded."""
    if attr(bn, "training_mode", 0):
        return None, "training_mode=1: the BN normalizes with batch statistics"
    if attr(bn, "is_test", 1) == 0 and "is_test" in bn.attributes:
        return None, "is_test=0: the BN is in training mode (batch statistics)"
    if attr(bn, "spatial", 1) == 0:
        return None, "spatial=0: per-activation statistics, not per channel"
    for extra in bn.outputs[1:]:
        if extra is not None and (list(extra.uses()) or extra.is_graph_output()):
            return None, f"its running-statistics output {extra.name!r} is read"
    if len(bn.inputs) < 5:
        return None, "fewer than 5 inputs"
    names = ("scale", "B", "mean", "var")
    arrays = []
    for name, value in zip(names, bn.inputs[1:5]):
        array = const_array(value)
        if array is None:
            return None, f"{name} is not a constant"
        arrays.append(np.asarray(array, dtype=np.float64))
    if any(a.ndim != 1 for a in arrays) or len({a.size for a in arrays}) != 1:
        return None, f"scale/B/mean/var are not per-channel vectors of one length ({[a.shape for a in arrays]})"
    gamma, beta, mean, var = arrays
    eps = float(attr(bn, "epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return _Stats(scale=scale, shift=beta - mean * scale), ""


@dataclass
class _Outcome:
    kind: Literal["folded", "shared", "unfoldable"]  # shared: only another reader of the producer stops it
    reason: str


def _fold(graph: ir.Graph, bn: ir.Node, stats: _Stats, params: Params, version: int,
          ranks: RankLookup) -> _Outcome:
    """Fold the BN into the node producing its input, or say why not."""
    producer = bn.inputs[0].producer()
    if producer is None:
        where = "a graph input" if bn.inputs[0].is_graph_input() else "a constant"
        return _Outcome("unfoldable", f"its input is {where}")
    kind, label = producer.op_type, f"{producer.op_type} {producer.name}".rstrip()
    if kind not in FOLD_INTO or producer.domain not in ("", "ai.onnx"):
        return _Outcome("unfoldable", f"its producer {label} is not a Conv, ConvTranspose, Gemm or MatMul")
    plan = {"Conv": _plan_conv, "ConvTranspose": _plan_conv_transpose, "Gemm": _plan_gemm,
            "MatMul": _plan_matmul}[kind](producer, stats, version, ranks)
    if isinstance(plan, str):
        return _Outcome("unfoldable", plan)
    y = producer.outputs[0]
    others = sorted({u.node.name or u.node.op_type for u in y.uses() if u.node is not bn})
    if y.is_graph_output():
        others.append("the graph output")
    target = producer
    if others:
        why = f"the {kind} output {y.name!r} is also read by {', '.join(others)}"
        if params.when_shared != "copy":
            return _Outcome("shared", why)
        target = _copy_node(graph, producer)
    _apply_plan(graph, target, plan)
    _replace_bn(graph, bn, plan["add_out"] if "add" in plan else target.outputs[0])
    if target is producer:
        return _Outcome("folded", f"into {label}")
    return _Outcome("folded", f"into a copy of {label} ({why})")


def _weight(node: ir.Node) -> tuple[np.ndarray | None, str]:
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None, f"{node.op_type} has no weight input"
    w = const_array(node.inputs[1])
    if w is None:
        return None, f"the {node.op_type} weight {node.inputs[1].name!r} is not a constant"
    if w.dtype.kind != "f":
        return None, f"the {node.op_type} weight is {w.dtype}, not floating point"
    return w, ""


def _bias(node: ir.Node, index: int, channels: int) -> tuple[np.ndarray | None, str]:
    if len(node.inputs) <= index or node.inputs[index] is None:
        return np.zeros(channels, dtype=np.float64), ""
    b = const_array(node.inputs[index])
    if b is None:
        return None, f"the {node.op_type} bias {node.inputs[index].name!r} is not a constant"
    return np.asarray(b, dtype=np.float64), ""


def _plan_conv(conv: ir.Node, stats: _Stats, version: int, ranks: RankLookup):
    w, why = _weight(conv)
    if w is None:
        return why
    if w.ndim < 3 or w.shape[0] != stats.scale.size:
        return f"the Conv has {w.shape[0]} output channels but the BN has {stats.scale.size}"
    b, why = _bias(conv, 2, w.shape[0])
    if b is None:
        return why
    s = stats.scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return {"w": (w.astype(np.float64) * s).astype(w.dtype),
            "b": (b * stats.scale + stats.shift).astype(w.dtype), "b_index": 2}


def _plan_conv_transpose(conv: ir.Node, stats: _Stats, version: int, ranks: RankLookup):
    w, why = _weight(conv)
    if w is None:
        return why
    group = int(attr(conv, "group", 1))
    if w.ndim < 3 or w.shape[0] % group:
        return f"the ConvTranspose weight shape {list(w.shape)} does not fit group={group}"
    out_channels = w.shape[1] * group
    if out_channels != stats.scale.size:
        return f"the ConvTranspose has {out_channels} output channels but the BN has {stats.scale.size}"
    b, why = _bias(conv, 2, out_channels)
    if b is None:
        return why
    # Weight [Cin, Cout/g, k...]: output channel g*Cout/g + j lives at [g*Cin/g:(g+1)*Cin/g, j].
    per_group = w.reshape((group, w.shape[0] // group, w.shape[1]) + w.shape[2:]).astype(np.float64)
    s = stats.scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
    return {"w": (per_group * s).reshape(w.shape).astype(w.dtype),
            "b": (b * stats.scale + stats.shift).astype(w.dtype), "b_index": 2}


def _plan_gemm(gemm: ir.Node, stats: _Stats, version: int, ranks: RankLookup):
    if version < 7:
        return f"Gemm at opset {version} (bias broadcasting needs opset 7+)"
    if len(gemm.inputs) < 2 or gemm.inputs[1] is None:
        return "Gemm has no B input"
    w = const_array(gemm.inputs[1])
    if w is None:
        return f"the Gemm weight {gemm.inputs[1].name!r} is not a constant"
    if w.ndim != 2 or w.dtype.kind != "f":
        return f"the Gemm weight is not a 2-D float matrix ({w.dtype}{list(w.shape)})"
    trans_b = int(attr(gemm, "transB", 0))
    n = w.shape[0] if trans_b else w.shape[1]
    if n != stats.scale.size:
        return f"the Gemm has {n} output columns but the BN has {stats.scale.size} channels"
    beta = float(attr(gemm, "beta", 1.0))
    has_c = len(gemm.inputs) > 2 and gemm.inputs[2] is not None
    if has_c:
        c = const_array(gemm.inputs[2])
        if c is None:
            return f"the Gemm bias {gemm.inputs[2].name!r} is not a constant"
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, n)):
            return f"the Gemm bias shape {list(c.shape)} does not broadcast over [M, {n}]"
    s = stats.scale.reshape((-1, 1) if trans_b else (1, -1))
    plan = {"w": (w.astype(np.float64) * s).astype(w.dtype), "b_index": 2}
    if has_c and beta != 0.0:
        plan["b"] = (c * stats.scale + stats.shift / beta).astype(w.dtype)
    else:
        plan["b"] = stats.shift.astype(w.dtype)
        plan["beta"] = 1.0
    return plan


def _plan_matmul(matmul: ir.Node, stats: _Stats, version: int, ranks: RankLookup):
    x, weight = matmul.inputs[0], matmul.inputs[1]
    w = const_array(weight)
    if w is None:
        return f"the MatMul weight {weight.name!r} (second input) is not a constant"
    if w.ndim != 2 or w.dtype.kind != "f":
        return f"the MatMul weight is not a 2-D float matrix ({w.dtype}{list(w.shape)})"
    rank = ranks.rank(x)
    if rank != 2:
        return (f"the MatMul input has rank {rank}; the BN channel axis 1 is the weight's column axis "
                "only for rank-2 inputs") if rank is not None else "the MatMul input rank is unknown"
    if w.shape[1] != stats.scale.size:
        return f"the MatMul has {w.shape[1]} output columns but the BN has {stats.scale.size} channels"
    return {"w": (w.astype(np.float64) * stats.scale.reshape(1, -1)).astype(w.dtype),
            "add": stats.shift.astype(w.dtype)}


def _apply_plan(graph: ir.Graph, node: ir.Node, plan: dict) -> None:
    """Point the node at new weight / bias initializers (never edits the old ones)."""
    stem = node.name or node.outputs[0].name or node.op_type
    new_w = add_initializer(graph, f"{stem}.weight_bnfolded", plan["w"])
    node.replace_input_with(1, new_w)
    if "b" in plan:
        index = plan["b_index"]
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, add_initializer(graph, f"{stem}.bias_bnfolded", plan["b"]))
    if "beta" in plan:
        node.attributes["beta"] = ir.AttrFloat32("beta", plan["beta"])
    if "add" in plan:
        shift = add_initializer(graph, f"{stem}.bias_bnfolded", plan["add"])
        out = node.outputs[0]
        add = ir.Node("", "Add", [out, shift], name=f"{stem}_bias_add",
                      outputs=[new_value(graph, f"{out.name}_biased", out)])
        graph.insert_after(node, add)
        plan["add_out"] = add.outputs[0]


def _copy_node(graph: ir.Graph, node: ir.Node) -> ir.Node:
    out = node.outputs[0]
    copy = ir.Node(node.domain, node.op_type, list(node.inputs),
                   [a for a in node.attributes.values()],
                   name=f"{node.name or node.op_type}_bnfolded",
                   outputs=[new_value(graph, f"{out.name}_bnfolded", out)])
    graph.insert_after(node, copy)
    return copy


def _replace_bn(graph: ir.Graph, bn: ir.Node, value: ir.Value) -> None:
    replace_value(bn.outputs[0], value)
    graph.remove(bn, safe=True)


def _decompose(graph: ir.Graph, bn: ir.Node, stats: _Stats, ranks: RankLookup) -> str:
    """BN -> Mul(scale) + Add(shift) with constants shaped [C, 1, ...]; returns a problem or ''."""
    x = bn.inputs[0]
    rank = ranks.rank(x)
    if rank is None:
        return "cannot become Mul+Add: the rank of its input is unknown"
    if rank < 2:
        return f"cannot become Mul+Add: its input has rank {rank}"
    dtype = x.dtype.numpy() if x.dtype is not None else const_array(bn.inputs[1]).dtype
    shape = (-1,) + (1,) * (rank - 2)
    stem = bn.name or bn.outputs[0].name or "bn"
    scale = add_initializer(graph, f"{stem}.scale", stats.scale.reshape(shape).astype(dtype))
    shift = add_initializer(graph, f"{stem}.shift", stats.shift.reshape(shape).astype(dtype))
    out = bn.outputs[0]
    mul = ir.Node("", "Mul", [x, scale], name=f"{stem}_mul",
                  outputs=[new_value(graph, f"{out.name}_scaled", out)])
    add = ir.Node("", "Add", [mul.outputs[0], shift], name=f"{stem}_add",
                  outputs=[new_value(graph, f"{out.name}_shifted", out)])
    graph.insert_after(bn, [mul, add])
    _replace_bn(graph, bn, add.outputs[0])
    return ""
