"""equalize: cross-layer equalization of Conv -> activation -> Conv chains (Nagel et al. 2019), exact in float."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array, opset, to_ir, to_proto
from edgeopt.graph.rewire import attr, new_value, replace_value, scalar_const
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.quant.equalize import Layer, equalize, input_ranges, output_ranges, precision
from edgeopt.quant.select import excluded, node_label

# f(x / s) = f(x) / s for s > 0, per element: scaling a channel passes through unchanged.
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
CLIP_INPUTS_OPSET = 11
BROADCAST_OPSET = 8  # Max/Min broadcast a per-channel bound from opset 8
FLOAT_MAX = 3.0e38  # Clip's attribute defaults before opset 11 are +-FLT_MAX: no bound


@dataclass
class Params:
    clip: Literal["per_channel", "skip"] = param(
        "per_channel",
        "ReLU6 / Clip(lo, hi) between two convolutions is not positively homogeneous (scaling a channel moves "
        "its clip point): per_channel = equalize anyway and rewrite the Clip exactly as Relu (or Max) and Min "
        "with per-channel bounds lo/s, hi/s (one more elementwise node; a runtime that fuses Clip into the "
        "Conv may not fuse these); skip = leave those pairs")
    rounds: int = param(20, "equalization rounds over the chain (conv -> depthwise -> conv needs a few)", ge=1)
    tolerance: float = param(1e-3, "stop when every scale of a round is within this of 1", gt=0)
    min_range: float = param(
        1e-6, "a channel whose weight range is below this fraction of its tensor's largest is not scaled "
        "(dead or pruned channels: the scale would divide by ~0)", ge=0, lt=1)
    exclude: list[str] = param(default_factory=list,
                               help="node names, globs or op types: pairs with either Conv excluded are left")


@dataclass
class _Pair:
    """producer Conv -> optional activation -> consumer Conv, and the Clip bounds to rewrite (if any)."""

    producer: ir.Node
    act: ir.Node | None
    consumer: ir.Node
    bounds: tuple[float | None, float | None] | None = None  # a Clip with a non-zero bound

    def label(self) -> str:
        middle = f" -> {self.act.op_type}" if self.act is not None else ""
        return f"{node_label(self.producer)}{middle} -> {node_label(self.consumer)}"


@register
class Equalize(Pass):
    name = "equalize"
    summary = "Cross-layer equalization of Conv -> (Relu | LeakyRelu | PRelu | ReLU6/Clip | none) -> Conv chains"
    description = (
        "Data-free cross-layer equalization (Nagel et al. 2019): for a Conv whose output reaches exactly one "
        "other Conv, directly or through one activation, output channel c of the first Conv's weight and bias "
        "is divided by s_c = sqrt(r1_c / r2_c) and the second Conv's weights reading channel c are multiplied "
        "by it (r: per-channel max |w|; group and depthwise aware), so both channel ranges become "
        "sqrt(r1_c * r2_c) and one scale per tensor (per-tensor int8) loses less. Chains such as "
        "conv -> depthwise -> conv are equalized pair by pair for a few rounds until the scales settle. "
        "Exact in float: Relu, LeakyRelu and PRelu commute with a positive per-channel scale; ReLU6 / Clip "
        "does not (its clip point would move), so by default it is rewritten exactly as Relu (Max for a "
        "non-zero lower bound) and Min with per-channel bounds hi/s_c (clip: skip leaves those pairs). "
        "Other activations, a BatchNormalization in between (run fold_batchnorm first), outputs with other "
        "readers, and weights or biases that are shared, graph inputs or not constants are skipped with the "
        "reason. No bias absorption: it shifts pre-activations by beta - 3*gamma of a BN, which changes "
        "the outputs whenever a pre-activation falls below it, and this pass only does exact rewrites. "
        "Weights get new initializers (float64 math, stored in their dtype)."
    )
    lossless = True
    advice = "leave equalize out, or set clip: skip"
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        ir_model = to_ir(model)
        graph = ir_model.graph
        version = opset(ir_model)
        notes: list[NodeNote] = []
        pairs: list[_Pair] = []
        for node in list(graph):
            if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
                continue
            found = _find_pair(node, params, version)
            if isinstance(found, str):
                notes.append(NodeNote(node_label(node), "Conv", "skipped", found))
            else:
                pairs.append(found)
        if not pairs:
            return PassResult(model, False, notes, f"no Conv pair to equalize ({len(notes)} Conv skipped)")

        index: dict[int, int] = {}  # id(node) -> layer index
        nodes: list[ir.Node] = []
        for pair in pairs:
            for node in (pair.producer, pair.consumer):
                if id(node) not in index:
                    index[id(node)] = len(nodes)
                    nodes.append(node)
        layers = [_layer(node) for node in nodes]
        dtypes = [_dtypes(node) for node in nodes]
        before = [(output_ranges(layer.weight), input_ranges(layer.weight, layer.group)) for layer in layers]
        links = [(index[id(p.producer)], index[id(p.consumer)]) for p in pairs]
        outcome = equalize(layers, links, params.rounds, params.tolerance, params.min_range)

        for node, layer, (w_dtype, b_dtype) in zip(nodes, layers, dtypes):
            _store(graph, node, layer, w_dtype, b_dtype)
        rewritten = 0
        for pair, (p, q), s in zip(pairs, links, outcome.scales):
            if pair.bounds is not None:
                _per_channel_clip(graph, pair, s, dtypes[p][0])
                rewritten += 1
            figures = {
                "channels": int(s.size), "scale_min": float(s.min()), "scale_max": float(s.max()),
                "w1_precision": [round(precision(before[p][0]), 4), round(precision(output_ranges(layers[p].weight)), 4)],
                "w2_precision": [round(precision(before[q][1]), 4),
                                 round(precision(input_ranges(layers[q].weight, layers[q].group)), 4)],
            }
            how = "; Clip became per-channel Relu/Max + Min" if pair.bounds is not None else ""
            notes.append(NodeNote(node_label(pair.producer), "Conv", "equalized", pair.label() + how, figures))
        settled = "" if outcome.converged else f", not settled after {outcome.rounds} rounds"
        summary = (f"equalized {len(pairs)} Conv pairs in {outcome.rounds} rounds{settled}"
                   + (f", {rewritten} Clip made per-channel" if rewritten else "")
                   + f", {len(notes) - len(pairs)} Conv skipped")
        return PassResult(to_proto(ir_model), True, notes, summary)


def _find_pair(producer: ir.Node, params: Params, version: int) -> _Pair | str:
    """The chain starting at this Conv, or why there is none to equalize."""
    why = _own_constant(producer, 1, "weight") or _own_constant(producer, 2, "bias", optional=True)
    if why:
        return why
    value = producer.outputs[0]
    reader = _sole_reader(value)
    if isinstance(reader, str):
        return reader
    act = None
    if reader.op_type == "BatchNormalization":
        return "a BatchNormalization follows it: run fold_batchnorm first"
    if reader.op_type != "Conv":
        act = reader
        if act.domain not in ("", "ai.onnx") or act.inputs[0] is not value:
            return f"its output goes to {act.op_type}, not a Conv or an activation"
        reader = _sole_reader(act.outputs[0])
        if isinstance(reader, str):
            return f"{act.op_type}: {reader}"
        value = act.outputs[0]
    consumer = reader
    if consumer.op_type != "Conv" or consumer.domain not in ("", "ai.onnx"):
        hop = f"{act.op_type} -> " if act is not None else ""
        return f"its output goes to {hop}{consumer.op_type}, not a Conv"
    if consumer.inputs[0] is not value:
        return f"{node_label(consumer)} reads it as its weight, not its input"
    pair = _Pair(producer, act, consumer)
    for node in (producer, consumer):
        pattern = excluded(node.name, node.op_type, params.exclude)
        if pattern:
            return f"{pair.label()}: {node_label(node)} is excluded ({pattern!r})"
    why = _own_constant(consumer, 1, "weight")
    if why:
        return f"{pair.label()}: {node_label(consumer)} {why}"
    w1, w2 = const_array(producer.inputs[1]), const_array(consumer.inputs[1])
    group = int(attr(consumer, "group", 1))
    if w1.ndim < 3 or w2.ndim != w1.ndim or w2.shape[0] % group or w2.shape[1] * group != w1.shape[0]:
        return (f"{pair.label()}: weight shapes {list(w1.shape)} and {list(w2.shape)} (group={group}) "
                "do not chain")
    if act is not None:
        why = _activation(pair, params, version)
        if why:
            return f"{pair.label()}: {why}"
    return pair


def _activation(pair: _Pair, params: Params, version: int) -> str:
    """'' when the activation commutes with a per-channel scale (or is rewritten to), else why not."""
    act = pair.act
    if act.op_type in HOMOGENEOUS:
        return ""
    if act.op_type != "Clip":
        return f"{act.op_type} is not positively homogeneous (f(x/s) != f(x)/s)"
    bounds = _clip_bounds(act, version)
    if isinstance(bounds, str):
        return bounds
    if all(b is None or b == 0 for b in bounds):
        return ""  # Clip(0, inf) is a Relu: exact as it stands
    if params.clip == "skip":
        return (f"Clip({bounds[0]}, {bounds[1]}) is not positively homogeneous: scaling a channel moves its "
                "clip point (clip: skip)")
    if version < BROADCAST_OPSET:
        return f"a per-channel Clip needs broadcasting Max/Min (opset {BROADCAST_OPSET}+), the model is opset {version}"
    pair.bounds = bounds
    return ""


def _clip_bounds(clip: ir.Node, version: int) -> tuple[float | None, float | None] | str:
    if version < CLIP_INPUTS_OPSET:
        bounds = [attr(clip, "min"), attr(clip, "max")]
    else:
        bounds = []
        for i in (1, 2):
            value = clip.inputs[i] if len(clip.inputs) > i else None
            if value is None:
                bounds.append(None)
                continue
            number = scalar_const(value)
            if number is None:
                return f"Clip bound {value.name!r} is not a constant scalar"
            bounds.append(number)
    return tuple(None if b is None or abs(b) >= FLOAT_MAX else float(b) for b in bounds)


def _own_constant(node: ir.Node, i: int, what: str, optional: bool = False) -> str:
    """'' when input i is a float constant only this node reads (or absent and optional), else why not."""
    value = node.inputs[i] if len(node.inputs) > i else None
    if value is None:
        return "" if optional else f"has no {what}"
    if value.is_graph_input():
        return f"its {what} {value.name!r} is a graph input"
    array = const_array(value)
    if array is None:
        return f"its {what} {value.name!r} is not a constant"
    if array.dtype not in (np.float32, np.float64):
        # float16 weights would be re-rounded after scaling: no longer exact
        return f"its {what} is {array.dtype}, not float32/float64"
    readers = {id(u.node) for u in value.uses()}
    if len(readers) > 1 or len(list(value.uses())) > 1 or value.is_graph_output():
        return f"its {what} {value.name!r} is shared with other nodes"
    return ""


def _sole_reader(value: ir.Value) -> ir.Node | str:
    uses = list(value.uses())
    if value.is_graph_output():
        return "its output is a graph output"
    if len(uses) != 1:
        names = sorted({u.node.op_type for u in uses})
        return f"its output is read by {len(uses)} inputs ({', '.join(names)})" if uses else "its output is unused"
    return uses[0].node


def _bias(node: ir.Node) -> np.ndarray | None:
    return const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None


def _layer(node: ir.Node) -> Layer:
    b = _bias(node)
    return Layer(const_array(node.inputs[1]).astype(np.float64), None if b is None else b.astype(np.float64),
                 int(attr(node, "group", 1)))


def _dtypes(node: ir.Node) -> tuple[np.dtype, np.dtype | None]:
    b = _bias(node)
    return const_array(node.inputs[1]).dtype, None if b is None else b.dtype


def _store(graph: ir.Graph, node: ir.Node, layer: Layer, w_dtype: np.dtype, b_dtype: np.dtype | None) -> None:
    """New initializers, so the input model's tensors are never edited."""
    w = node.inputs[1]
    node.replace_input_with(1, add_initializer(graph, f"{w.name}_eq", layer.weight.astype(w_dtype)))
    if layer.bias is not None:
        b = node.inputs[2]
        node.replace_input_with(2, add_initializer(graph, f"{b.name}_eq", layer.bias.astype(b_dtype)))


def _per_channel_clip(graph: ir.Graph, pair: _Pair, s: np.ndarray, dtype: np.dtype) -> None:
    """Clip(x, lo, hi) on channels scaled by 1/s becomes Max(x, lo/s) (Relu when lo = 0) then Min(x, hi/s)."""
    clip = pair.act
    lo, hi = pair.bounds
    rank = const_array(pair.producer.inputs[1]).ndim
    shape = (s.size,) + (1,) * (rank - 2)
    x, anchor = clip.inputs[0], clip
    for op, bound in (("Max", lo), ("Min", hi)):
        if bound is None:
            continue
        name = f"{clip.name or 'clip'}_{op.lower()}"
        out = new_value(graph, f"{x.name}_{op.lower()}", clip.outputs[0])
        if op == "Max" and bound == 0:
            node = ir.Node("", "Relu", [x], name=f"{clip.name or 'clip'}_relu", outputs=[out])
        else:
            vector = add_initializer(graph, f"{name}_bound", (bound / s).astype(dtype).reshape(shape))
            node = ir.Node("", op, [x, vector], name=name, outputs=[out])
        graph.insert_after(anchor, node)
        x, anchor = out, node
    replace_value(clip.outputs[0], x)
    graph.remove(clip, safe=True)
