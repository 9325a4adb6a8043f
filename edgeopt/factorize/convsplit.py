"""The loop both split passes share: find Convs, fit each under the budget, rewrite, report per layer.

A pass supplies a `Splitter` (what it can split, its MACs, its fit, its
rewrite); this module does the rest the same way for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.factorize.conv_layers import ConvLayer, collect_patches, conv_layer, matches, value_shapes
from edgeopt.factorize.search import choose_size
from edgeopt.factorize.target import SizePlan, layer_options, plan_sizes
from edgeopt.graph.edit import add_initializer, to_ir, to_proto
from edgeopt.pass_types import NodeNote, PassContext, PassResult, param
from edgeopt.progress import tracked
from edgeopt.prune.macs import total_macs

BN_WARNING = ("a BatchNormalization follows: run fold_batchnorm before this pass so the error "
              "budget applies to the folded weights")


@dataclass
class SplitBudget:
    """The error budget and selection both split passes take; their Params add the factor size."""

    max_error: float = param(
        0.3, "largest relative error per layer: with the recipe's `data`, of the layer's output against the "
             "original model's output there (earlier splits included), else of its weights; a layer that "
             "cannot meet it is left alone", gt=0)
    min_macs_saving: float = param(
        0.25, "split a layer only if it saves at least this fraction of the layer's MACs (0.25 = 25 %); "
              "a negative value allows splits that add MACs", lt=1)
    exclude: list[str] = param(help="Conv node names (or wildcards like `stem*`) to leave alone",
                               default_factory=list)
    target_macs: float | None = param(
        None, "fraction of the model's MACs to keep (0.5 = 2x fewer): sizes are then chosen across layers, "
              "the least squared error per MAC saved first, until the target is met (each layer still "
              "within max_error and min_macs_saving); the summary says when it cannot be met", gt=0, le=1)


class Splitter(Protocol):
    action: str  # the NodeNote action of a split layer ("split")
    what: str  # the size's symbol in messages: "m" or "r"
    size_figure: str  # the size's key in the figures: "depth_multiplier" or "rank"

    def eligible(self, layer: ConvLayer) -> str | None: ...  # None, or why the layer cannot be split
    def macs_after(self, layer: ConvLayer, size: int) -> int | None: ...
    def saving(self, layer: ConvLayer, size: int) -> float: ...  # fraction of the layer's MACs saved
    # an object with .full (the exact size), .weight_errors() (per size), .inherited_error and
    # .split(size) -> a split; patches / reference / images as in factorize.depthwise.DepthwiseFactorizer
    def factorizer(self, layer: ConvLayer, patches: np.ndarray | None, reference: np.ndarray | None,
                   images: np.ndarray | None) -> Any: ...
    def rewrite(self, graph: ir.Graph, layer: ConvLayer, split: Any, namer: "Namer") -> None: ...


class Namer:
    """Node and value names not yet used in the graph."""

    def __init__(self, graph: ir.Graph):
        self.taken = {n.name for n in graph if n.name} | {v.name for n in graph for v in n.outputs}
        self.taken |= {v.name for v in graph.inputs} | set(graph.initializers)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def conv_node(namer: Namer, name: str, inputs: list[ir.Value | None], attrs: dict) -> ir.Node:
    node = ir.Node("", "Conv", inputs, attributes=ir.convenience.convert_attributes(attrs),
                   name=namer(name), num_outputs=1)
    node.outputs[0].name = namer(f"{name}_out")
    return node


def weight(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    return add_initializer(graph, name, np.ascontiguousarray(array, dtype=np.float32))


def replace(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node]) -> None:
    """Put new_nodes where old was; the last one's output takes over old's output (name included)."""
    ir.convenience.replace_nodes_and_values(graph, old, [old], new_nodes, [old.outputs[0]],
                                            [new_nodes[-1].outputs[0]])


def geometry_attrs(layer: ConvLayer) -> dict:
    """The original Conv's geometry attributes as written (auto_pad kept as is)."""
    keep = ("auto_pad", "pads", "strides", "dilations", "kernel_shape")
    return {k: a.value for k, a in layer.node.attributes.items() if k in keep}


def run_split(model: onnx.ModelProto, params: Any, requested: int | None, ctx: PassContext,
              splitter: Splitter) -> PassResult:
    """Split every Conv the splitter can take, within params.max_error and params.min_macs_saving.

    With calibration data the layers are fitted in graph order, each on the
    inputs it gets after the earlier splits and towards the original model's
    output at that layer, so a layer corrects part of the error the earlier
    ones left; its error is then measured against the original model too.
    """
    ir_model = to_ir(model)
    graph = ir_model.graph
    shapes = value_shapes(model, ctx.input_shapes)
    notes: list[NodeNote] = []
    layers: list[ConvLayer] = []
    for node in list(graph):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.outputs[0].name
        if matches(name, params.exclude):
            notes.append(NodeNote(name, "Conv", "skipped", "excluded by the `exclude` parameter"))
            continue
        layer = conv_layer(node, shapes)
        reason = layer if isinstance(layer, str) else splitter.eligible(layer)
        if reason:
            notes.append(NodeNote(name, "Conv", "skipped", reason))
        else:
            layers.append(layer)
    reference = collect_patches(model, layers, ctx.data, ctx.seed) if ctx.data and layers else {}
    plan, model_macs = None, None
    if params.target_macs is not None:
        model_macs = total_macs(model, ctx.input_shapes)
        plan, planned = _plan_target(layers, reference, params, model_macs, splitter)
    namer = Namer(graph)
    done, macs_before, macs_after, bn_layers = 0, 0, 0, 0
    for index, layer in tracked(enumerate(layers), "fitting splits"):
        if plan is not None and index not in plan.sizes:
            why = ("not needed to meet target_macs: cheaper errors per MAC saved met it" if index in planned
                   else "no size within max_error and min_macs_saving to offer target_macs")
            notes.append(NodeNote(layer.name, "Conv", "skipped", why))
            continue
        original = reference.get(layer.name)
        if original is None:
            factorizer = splitter.factorizer(layer, None, None, None)
        elif not done:
            factorizer = splitter.factorizer(layer, original.values, None, original.images)
        else:  # what this layer sees now, at the same positions
            current = collect_patches(ir.to_proto(ir_model), [layer], ctx.data, ctx.seed)[layer.name]
            factorizer = splitter.factorizer(layer, current.values, original.values, original.images)
        choice = choose_size(
            factorizer.full, requested if plan is None else plan.sizes[index],
            lambda s, layer=layer: splitter.saving(layer, s), factorizer.split,
            params.max_error, params.min_macs_saving,
            weight_errors=None if original is not None else factorizer.weight_errors(),
            what=splitter.what)
        before = layer.macs()
        figures: dict = {"macs_before": before}
        if choice.tried:
            figures["errors_tried"] = {str(k): round(v, 5) for k, v in choice.tried.items()}
        if factorizer.inherited_error:
            figures["inherited_error"] = round(float(factorizer.inherited_error), 6)
        if choice.split is None:
            reason = choice.reason
            if factorizer.inherited_error:
                reason += (f"; the unsplit layer is already at {factorizer.inherited_error:.3g} "
                           "from the earlier splits")
            notes.append(NodeNote(layer.name, "Conv", "skipped", reason, figures))
            continue
        split = choice.split
        size = split.size
        after = splitter.macs_after(layer, size)
        figures.update({"macs_after": after, "macs_saving": round(splitter.saving(layer, size), 4),
                        splitter.size_figure: size, "error": round(float(split.error), 6),
                        "error_on": split.error_on, "refitted": split.refitted})
        if plan is not None:
            figures["planned_error"] = round(plan.errors[index], 6)
        splitter.rewrite(graph, layer, split, namer)
        notes.append(NodeNote(layer.name, "Conv", splitter.action, BN_WARNING if layer.bn_follows else "",
                              figures))
        done += 1
        bn_layers += layer.bn_follows
        if before is not None and after is not None:
            macs_before, macs_after = macs_before + before, macs_after + after
    skipped = sum(1 for n in notes if n.action == "skipped")
    summary = f"split {done} of {done + skipped} Conv"
    if done and macs_before:
        change = (f"{macs_before / macs_after:.2f}x fewer" if macs_after <= macs_before
                  else f"{macs_after / macs_before:.2f}x more")
        summary += f": their MACs {macs_before / 1e6:.3g} M -> {macs_after / 1e6:.3g} M ({change})"
    if skipped:
        summary += f"; {skipped} skipped"
    if bn_layers:
        summary += f"; {bn_layers} followed by BatchNormalization (run fold_batchnorm first)"
    out = to_proto(ir_model) if done else model
    if plan is not None:
        summary += _target_summary(params.target_macs, model_macs, total_macs(out, ctx.input_shapes), plan)
    return PassResult(out, bool(done), notes, summary)


def _plan_target(layers: list[ConvLayer], reference: dict, params: Any, model_macs: int,
                 splitter: Splitter) -> tuple[SizePlan, set[int]]:
    """Sizes per layer for params.target_macs, from each layer's errors fitted on the original model;
    and the layers that had any size to offer."""
    needed = math.ceil(model_macs * (1 - params.target_macs) - 1e-9)
    options = []
    for index, layer in tracked(enumerate(layers), "measuring split errors"):
        before = layer.macs()
        if before is None:
            continue
        original = reference.get(layer.name)
        if original is None:
            factorizer = splitter.factorizer(layer, None, None, None)
            table = factorizer.weight_errors()
            errors = lambda sizes, table=table: {s: float(table[s]) for s in sizes}  # noqa: E731
        else:
            factorizer = splitter.factorizer(layer, original.values, None, original.images)
            errors = lambda sizes, f=factorizer: {s: float(f.split(s).error) for s in sizes}  # noqa: E731
        options += layer_options(index, factorizer.full, before, lambda s, layer=layer: splitter.macs_after(layer, s),
                                 lambda s, layer=layer: splitter.saving(layer, s), errors, params.max_error,
                                 params.min_macs_saving)
    return plan_sizes(options, needed), {o.group for o in options}


def _target_summary(target: float, before: int, after: int, plan: SizePlan) -> str:
    ratio = after / before if before else 1.0
    text = f"; model MACs {before:,} -> {after:,} (x{ratio:.3f})"
    if ratio <= target + 1e-12:
        return text + f", target_macs {target:g} met"
    if not plan.met:
        return text + (f"; target_macs {target:g} NOT met: every layer at the deepest split within max_error "
                       "and min_macs_saving saves too little (raise max_error or lower min_macs_saving)")
    return text + (f"; target_macs {target:g} NOT met: the planned splits reach it but some layer's error on "
                   "the inputs it gets after the earlier splits exceeds max_error (see notes)")
