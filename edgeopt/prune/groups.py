"""Channel dependency groups over an ONNX graph (DepGraph's idea, on onnx_ir).

Every Conv (group 1), Gemm or MatMul with a constant weight *produces* a
channel space: its output channels, which can be removed by dropping rows of
its weight. The analysis walks the graph in order and follows each space
through the nodes that keep channels apart (activations, BatchNormalization,
pooling, depthwise convs, Flatten / Reshape to features, Transpose, Squeeze,
Reduce over other axes, elementwise ops with per-channel constants). Where
two tracked tensors meet elementwise (a residual Add, a squeeze-excite Mul)
their spaces are tied into one group: channel i of both must go together.
A Concat along the channel axis lays spaces side by side, so one tensor's
channels can be several segments from different groups.

A node the analysis cannot follow (a Reshape that splits channels, a Split
along channels, a grouped conv, a Shape, a graph output, ...) *freezes* every
group it touches, with the reason, so the pass never produces a wrong model.

The result says, for each group, the nodes that produce it (sources), the
nodes whose weights read it (consumers), and every constant that must be
sliced with it (`slices`), which is all `shrink` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import const_array

UNARY = {
    "Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast",
    "Erf", "Gelu", "Mish", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Shrink",
    "IsNaN", "IsInf", "Not",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


@dataclass(frozen=True)
class ChanInfo:
    """Where a tensor keeps its channels.

    axis: the channel axis; rank: the tensor's rank; segments: (space, length)
    side by side along the axis; inner: elements per channel along the axis
    (1, or H*W after a Flatten to features).
    """

    axis: int
    rank: int
    segments: tuple[tuple[int, int], ...]
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(length for _, length in self.segments)

    def moved(self, axis: int, rank: int, inner: int | None = None) -> "ChanInfo":
        return ChanInfo(axis, rank, self.segments, self.inner if inner is None else inner)


@dataclass
class Source:
    """A node whose output channels are a space: dropping rows of its weight removes them."""

    node: ir.Node
    kind: str  # "conv", "gemm", "matmul"
    weight: ir.Value
    out_axis: int
    space: int


@dataclass
class Consumer:
    """A node whose weight reads tracked channels along `in_axis` (what reconstruction refits)."""

    node: ir.Node
    kind: str  # "conv", "gemm", "matmul"
    value: ir.Value  # the tracked input
    weight: ir.Value
    in_axis: int


@dataclass
class Slice:
    """Input `index` of `node` is a constant to cut along `axis` to the kept positions of tensor `value`."""

    node: ir.Node
    index: int
    axis: int
    value: str


@dataclass
class ChannelGroup:
    """Channels that must be pruned together: every space in it loses the same indices."""

    id: int
    length: int
    spaces: list[int]
    sources: list[Source]
    consumers: list[Consumer] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen and bool(self.sources)

    @property
    def name(self) -> str:
        return node_label(self.sources[0].node) if self.sources else f"group{self.id}"

    @property
    def source_names(self) -> list[str]:
        return [node_label(s.node) for s in self.sources]


def node_label(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op_type)


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def static_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, list]:
    """Inferred shape of every tensor (dims as int, or None when unknown), with inputs fixed.

    Dynamic input dims come from input_shapes, else a free batch dim is 1 (the shape layer).
    A value whose shape the shape layer cannot tell is left out.
    """
    from edgeopt.graph.shapes import infer_value_shapes, light_copy, resolve_input_shapes

    try:
        values = infer_value_shapes(model, resolve_input_shapes(model, input_shapes or {}))
        return {name: list(shape) for name, (_, shape) in values.items() if shape is not None}
    except Exception:  # noqa: BLE001 - unknown non-batch dims: what onnx infers with the model's own dims
        pass
    try:
        graph = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001
        graph = model.graph
    out: dict[str, list] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    out.update({init.name: list(init.dims) for init in model.graph.initializer})
    return out


class GraphAnalysis:
    """Channel spaces, their groups, and every edit that removing channels implies."""

    def __init__(self, graph: ir.Graph, shapes: dict[str, list]):
        self.graph = graph
        self.shapes = shapes
        self.info: dict[str, ChanInfo] = {}
        self.parent: list[int] = []
        self.length: list[int] = []
        self.space_frozen: dict[int, list[str]] = {}
        self.sources: list[Source] = []
        self.consumers: list[Consumer] = []
        self.slices: list[Slice] = []
        self.depthwise: list[tuple[ir.Node, str]] = []  # (node, tracked input): group attr follows
        self.reshapes: list[tuple[ir.Node, int, str]] = []  # (node, target dim, output): explicit dim follows
        self.weight_axes: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}
        self.groups: list[ChannelGroup] = []

    # -- spaces -------------------------------------------------------------

    def new_space(self, length: int, frozen_reason: str | None = None) -> int:
        space = len(self.parent)
        self.parent.append(space)
        self.length.append(length)
        if frozen_reason:
            self.space_frozen.setdefault(space, []).append(frozen_reason)
        return space

    def root(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo

    def freeze(self, info: ChanInfo | None, reason: str) -> None:
        if info is None:
            return
        for space, _ in info.segments:
            reasons = self.space_frozen.setdefault(space, [])
            if reason not in reasons:
                reasons.append(reason)

    def tie(self, a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> bool:
        """Tie two segment layouts channel by channel; False if they do not line up."""
        if [length for _, length in a] != [length for _, length in b]:
            return False
        for (sa, _), (sb, _) in zip(a, b):
            self.union(sa, sb)
        return True

    # -- lookups ------------------------------------------------------------

    def shape(self, value: ir.Value | None) -> list | None:
        if value is None:
            return None
        if value.name in self.shapes:
            return self.shapes[value.name]
        arr = const_array(value)
        if arr is not None:
            return list(arr.shape)
        if value.shape is not None:
            return [d if isinstance(d, int) else None for d in value.shape.dims]
        return None

    def rank(self, value: ir.Value | None) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    def tracked(self, node: ir.Node) -> list[tuple[int, ir.Value, ChanInfo]]:
        return [(i, v, self.info[v.name]) for i, v in enumerate(node.inputs) if v is not None and v.name in self.info]

    def freeze_inputs(self, node: ir.Node, reason: str) -> None:
        for _, _, info in self.tracked(node):
            self.freeze(info, reason)

    def weight_segments(self, weight: ir.Value, axis: int, length: int, node: ir.Node, kind: str):
        """The space of a weight's output axis; a weight shared by several nodes gives them one space."""
        key = (weight.name, axis)
        if key not in self.weight_axes:
            self.weight_axes[key] = ((self.new_space(length), length),)
        segments = self.weight_axes[key]
        self.sources.append(Source(node, kind, weight, axis, segments[0][0]))
        return segments

    def tie_weight_input(self, weight: ir.Value, axis: int, info: ChanInfo, node: ir.Node) -> bool:
        """A weight shared by several nodes reads the same channels on its input axis in all of them."""
        key = (weight.name, axis)
        if key not in self.weight_axes:
            self.weight_axes[key] = info.segments
            return True
        if not self.tie(self.weight_axes[key], info.segments):
            self.freeze(info, f"{node.op_type} {node_label(node)} shares weight {weight.name} with a node "
                              "whose input channels are laid out differently")
            for space, _ in self.weight_axes[key]:
                self.space_frozen.setdefault(space, []).append(f"weight {weight.name} is shared")
            return False
        return True

    def opaque(self, value: ir.Value, axis_from_end: int, why: str) -> ChanInfo | None:
        """A frozen space for an untracked tensor that meets tracked ones (None if its size is unknown)."""
        s = self.shape(value)
        if s is None or len(s) + axis_from_end < 0 or s[len(s) + axis_from_end] is None:
            return None
        rank = len(s)
        length = s[rank + axis_from_end]
        return ChanInfo(rank + axis_from_end, rank, ((self.new_space(length, why), length),))

    # -- the walk -----------------------------------------------------------

    def run(self) -> "GraphAnalysis":
        handled: set[int] = set()
        for node in self.graph:
            handled.add(id(node))
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx"):
                handler = None
            if handler is None:
                if node.op_type in UNARY and node.domain in ("", "ai.onnx"):
                    handler = self._unary
                elif node.op_type in ELEMENTWISE and node.domain in ("", "ai.onnx"):
                    handler = self._elementwise
                elif node.op_type in POOLS and node.domain in ("", "ai.onnx"):
                    handler = self._pool
                elif node.op_type in REDUCES and node.domain in ("", "ai.onnx"):
                    handler = self._reduce
            if handler is None:
                self.freeze_inputs(node, f"{node.op_type} {node_label(node)} reads the channels and the "
                                         "pruner cannot follow it")
                continue
            handler(node)
        for value in self.graph.outputs:
            if value.name in self.info:
                self.freeze(self.info[value.name], f"{value.name} is a graph output (its shape is the contract)")
        for name, info in self.info.items():
            value = self._value(name)
            if value is None:
                continue
            for use in value.uses():
                if id(use.node) not in handled:
                    self.freeze(info, f"{use.node.op_type} {node_label(use.node)} in a subgraph reads the channels")
        self._build_groups()
        return self

    def _value(self, name: str) -> ir.Value | None:
        if not hasattr(self, "_values"):
            self._values = {}
            for node in self.graph:
                for v in list(node.inputs) + list(node.outputs):
                    if v is not None:
                        self._values[v.name] = v
        return self._values.get(name)

    def _build_groups(self) -> None:
        members: dict[int, list[int]] = {}
        for space in range(len(self.parent)):
            members.setdefault(self.root(space), []).append(space)
        by_root: dict[int, ChannelGroup] = {}
        for root, spaces in sorted(members.items()):
            frozen = []
            for s in spaces:
                for reason in self.space_frozen.get(s, []):
                    if reason not in frozen:
                        frozen.append(reason)
            by_root[root] = ChannelGroup(id=len(by_root), length=self.length[root], spaces=spaces,
                                         sources=[], frozen=frozen)
        for src in self.sources:
            by_root[self.root(src.space)].sources.append(src)
        for con in self.consumers:
            seen = set()
            for space, _ in self.info[con.value.name].segments:
                root = self.root(space)
                if root not in seen:
                    seen.add(root)
                    by_root[root].consumers.append(con)
        for group in by_root.values():
            if not group.sources and not group.frozen:
                group.frozen.append("no Conv / Gemm / MatMul produces these channels")
        self.groups = [g for g in by_root.values() if g.sources or any(s in self.space_frozen for s in g.spaces)]
        self._group_of_root = {self.root(g.spaces[0]): g for g in self.groups}

    def group_of(self, space: int) -> ChannelGroup:
        return self._group_of_root[self.root(space)]

    def channels_of(self, value: str, group: ChannelGroup) -> np.ndarray | None:
        """Channel indices (before `inner` expansion) of the group's first segment in tensor `value`."""
        offset = 0
        for space, length in self.info[value].segments:
            if self._group_of_root.get(self.root(space)) is group:
                return offset + np.arange(length)
            offset += length
        return None

    def positions(self, value: str, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along the channel axis of tensor `value` that survive, given kept channels per group id."""
        info = self.info[value]
        parts, offset = [], 0
        for space, length in info.segments:
            group = self._group_of_root.get(self.root(space))
            kept = keep.get(group.id) if group is not None else None
            idx = np.arange(length) if kept is None else np.asarray(kept, dtype=np.int64)
            parts.append(offset + idx)
            offset += length
        channels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if info.inner == 1:
            return channels
        return (channels[:, None] * info.inner + np.arange(info.inner)[None, :]).reshape(-1)

    # -- op handlers --------------------------------------------------------

    def _unary(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, x, info = tracked[0]
        if tracked[0][0] != 0 or len(tracked) > 1:
            self.freeze_inputs(node, f"{node.op_type} {node_label(node)} reads channels in a parameter input")
            return
        if any(o is not None and o.uses() for o in node.outputs[1:]):
            self.freeze(info, f"{node.op_type} {node_label(node)}: its second output is used")
            return
        self.info[node.outputs[0].name] = info

    def _op_Conv(self, node: ir.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        info = self.info.get(x.name) if x is not None else None
        label = f"Conv {node_label(node)}"
        W = const_array(w)
        if W is None:
            self.freeze(info, f"{label}: W is not a constant")
            return
        if b is not None and const_array(b) is None:
            self.freeze(info, f"{label}: B is not a constant")
            return
        if info is not None and (info.axis != 1 or info.inner != 1):
            self.freeze(info, f"{label} reads a tensor whose channels are not on axis 1")
            info = None
        group = int(_attr(node, "group", 1))
        cout, cin_per_group = W.shape[0], W.shape[1]
        y = node.outputs[0]
        rank = W.ndim
        if group == 1:
            segments = self.weight_segments(w, 0, cout, node, "conv")
            self.slices.append(Slice(node, 1, 0, y.name))
            if b is not None:
                self.slices.append(Slice(node, 2, 0, y.name))
            if info is not None and self.tie_weight_input(w, 1, info, node):
                self.consumers.append(Consumer(node, "conv", x, w, 1))
                self.slices.append(Slice(node, 1, 1, x.name))
            self.info[y.name] = ChanInfo(1, rank, segments)
        elif cin_per_group == 1 and cout == group:
            if info is None:
                return  # depthwise over an untracked tensor (e.g. the graph input): nothing follows
            if not self.tie_weight_input(w, 0, info, node):
                return
            self.slices.append(Slice(node, 1, 0, x.name))
            if b is not None:
                self.slices.append(Slice(node, 2, 0, x.name))
            self.depthwise.append((node, x.name))
            self.info[y.name] = ChanInfo(1, rank, info.segments)
        else:
            self.freeze(info, f"{label} is a grouped conv (group={group}, {cin_per_group} input channels per "
                              "group): its channels go in blocks")

    def _op_ConvTranspose(self, node: ir.Node) -> None:
        """A ConvTranspose reading tracked channels (a decoder's upsampling): W is [C_in, C_out/group,
        k...], so its input channels are W's axis 0 and are cut with them. It produces no group of its
        own, and reconstruction does not refit it."""
        x, w = node.inputs[0], node.inputs[1]
        info = self.info.get(x.name) if x is not None else None
        if info is None:
            return
        label = f"ConvTranspose {node_label(node)}"
        if const_array(w) is None:
            self.freeze(info, f"{label}: W is not a constant")
        elif info.axis != 1 or info.inner != 1:
            self.freeze(info, f"{label} reads a tensor whose channels are not on axis 1")
        elif int(_attr(node, "group", 1)) != 1:
            self.freeze(info, f"{label} is a grouped ConvTranspose: its channels go in blocks")
        elif self.tie_weight_input(w, 0, info, node):
            self.slices.append(Slice(node, 1, 0, x.name))

    def _op_Gemm(self, node: ir.Node) -> None:
        a, bval = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        info = self.info.get(a.name) if a is not None else None
        label = f"Gemm {node_label(node)}"
        B = const_array(bval)
        if int(_attr(node, "transA", 0)):
            self.freeze(info, f"{label} has transA=1")
            return
        if B is None or B.ndim != 2:
            self.freeze(info, f"{label}: B is not a constant matrix")
            return
        C = const_array(c) if c is not None else None
        if c is not None and C is None:
            self.freeze(info, f"{label}: C is not a constant")
            return
        in_axis, out_axis = (1, 0) if int(_attr(node, "transB", 0)) else (0, 1)
        m = B.shape[out_axis]
        y = node.outputs[0]
        segments = self.weight_segments(bval, out_axis, m, node, "gemm")
        self.slices.append(Slice(node, 1, out_axis, y.name))
        if C is not None and C.ndim >= 1 and C.shape[-1] == m and m > 1:
            self.slices.append(Slice(node, 2, C.ndim - 1, y.name))
        elif C is not None and C.ndim >= 1 and C.shape[-1] != 1:
            self.space_frozen.setdefault(segments[0][0], []).append(f"{label}: C of shape {list(C.shape)}")
        if info is not None:
            if info.axis != 1 or info.rank != 2 or info.channels * info.inner != B.shape[in_axis]:
                self.freeze(info, f"{label} reads features laid out unlike its input channels")
            elif self.tie_weight_input(bval, in_axis, info, node):
                self.consumers.append(Consumer(node, "gemm", a, bval, in_axis))
                self.slices.append(Slice(node, 1, in_axis, a.name))
        self.info[y.name] = ChanInfo(1, 2, segments)

    def _op_MatMul(self, node: ir.Node) -> None:
        a, bval = node.inputs
        info = self.info.get(a.name) if a is not None else None
        label = f"MatMul {node_label(node)}"
        if bval is not None and bval.name in self.info:
            self.freeze(self.info[bval.name], f"{label} reads channels in its right-hand operand")
        B = const_array(bval)
        rank = self.rank(node.outputs[0]) or self.rank(a)
        if B is None or B.ndim != 2 or rank is None or rank < 2:
            self.freeze(info, f"{label}: B is not a constant matrix")
            return
        y = node.outputs[0]
        segments = self.weight_segments(bval, 1, B.shape[1], node, "matmul")
        self.slices.append(Slice(node, 1, 1, y.name))
        if info is not None:
            if info.axis != info.rank - 1 or info.channels * info.inner != B.shape[0]:
                self.freeze(info, f"{label} reads features laid out unlike its input channels")
            elif self.tie_weight_input(bval, 0, info, node):
                self.consumers.append(Consumer(node, "matmul", a, bval, 0))
                self.slices.append(Slice(node, 1, 0, a.name))
        self.info[y.name] = ChanInfo(rank - 1, rank, segments)

    def _norm(self, node: ir.Node, params: range) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        label = f"{node.op_type} {node_label(node)}"
        _, x, info = tracked[0]
        if tracked[0][0] != 0 or len(tracked) > 1:
            self.freeze_inputs(node, f"{label} reads channels in a parameter input")
            return
        if info.axis != 1 or info.inner != 1:
            self.freeze(info, f"{label} normalizes along an axis that is not the channel axis")
            return
        for i in params:
            if i < len(node.inputs) and node.inputs[i] is not None:
                arr = const_array(node.inputs[i])
                if arr is None or arr.ndim != 1:
                    self.freeze(info, f"{label}: parameter {i} is not a constant vector")
                    return
        if any(o is not None and o.uses() for o in node.outputs[1:]):
            self.freeze(info, f"{label} outputs its running statistics (training mode)")
            return
        for i in params:
            if i < len(node.inputs) and node.inputs[i] is not None:
                self.slices.append(Slice(node, i, 0, x.name))
        self.info[node.outputs[0].name] = info

    def _op_BatchNormalization(self, node: ir.Node) -> None:
        self._norm(node, range(1, 5))

    def _op_InstanceNormalization(self, node: ir.Node) -> None:
        self._norm(node, range(1, 3))

    def _elementwise(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        label = f"{node.op_type} {node_label(node)}"
        y = node.outputs[0]
        out_rank = self.rank(y) or max(i.rank for _, _, i in tracked)
        # A tracked tensor with one channel against many broadcasts (e.g. a spatial attention map):
        # it is not tied to the others, and its single channel cannot go.
        widths = {i.channels * i.inner for _, _, i in tracked}
        if len(widths) > 1 and 1 in widths:
            for _, _, i in tracked:
                if i.channels * i.inner == 1:
                    self.freeze(i, f"{label} broadcasts this one-channel tensor over the channels")
            tracked = [t for t in tracked if t[2].channels * t[2].inner != 1]
        first = tracked[0][2]
        neg = first.axis - first.rank
        for _, v, info in tracked[1:]:
            if info.axis - info.rank != neg or info.inner != first.inner or not self.tie(first.segments, info.segments):
                for _, _, i in tracked:
                    self.freeze(i, f"{label} combines tensors whose channels are laid out differently")
                return
        width = first.channels * first.inner
        tracked_idx = {i for i, _, _ in tracked}
        for idx, v in enumerate(node.inputs):
            if v is None or idx in tracked_idx or v.name in self.info:
                continue
            arr = const_array(v)
            shape = list(arr.shape) if arr is not None else self.shape(v)
            pos = None if shape is None else len(shape) + neg
            if shape is None or (pos >= 0 and shape[pos] is None):
                self.freeze(first, f"{label} reads {v.name}, whose shape is unknown")
                return
            if pos < 0 or shape[pos] == 1:
                continue
            if shape[pos] != width:
                self.freeze(first, f"{label} reads {v.name} of shape {shape}, which does not line up with "
                                   "the channels")
                return
            if arr is not None:
                self.slices.append(Slice(node, idx, pos, tracked[0][1].name))
            else:
                producer = v.producer()
                self.freeze(first, f"{label} adds channels of {v.name} (from "
                                   f"{producer.op_type if producer else 'a graph input'}), which the pruner "
                                   "cannot trace to a Conv")
                return
        self.info[y.name] = ChanInfo(out_rank + neg, out_rank, first.segments, first.inner)

    def _pool(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        if info.axis != 1 or info.inner != 1:
            self.freeze(info, f"{node.op_type} {node_label(node)} pools a tensor whose channels are not on axis 1")
            return
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
            self.freeze(info, f"{node.op_type} {node_label(node)}: its indices output counts channels")
            return
        self.info[node.outputs[0].name] = info

    def _op_Concat(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        label = f"Concat {node_label(node)}"
        y = node.outputs[0]
        first = tracked[0][2]
        rank = first.rank
        axis = int(_attr(node, "axis", 0))
        axis = axis + rank if axis < 0 else axis
        neg = first.axis - first.rank
        infos = []
        for v in node.inputs:
            if v is None:
                continue
            info = self.info.get(v.name)
            if info is None:
                producer = v.producer()
                why = (f"{label} concatenates {v.name} (from "
                       f"{producer.op_type if producer else 'a constant or graph input'}), which the pruner "
                       "cannot trace to a Conv")
                info = self.opaque(v, neg, why)
                if info is None:
                    self.freeze_inputs(node, f"{label}: shape of {v.name} is unknown")
                    return
                self.freeze(info, why)
            infos.append(info)
        if any(i.axis != first.axis or i.rank != rank or i.inner != 1 for i in infos):
            self.freeze_inputs(node, f"{label} joins tensors whose channels are laid out differently")
            for i in infos:
                self.freeze(i, f"{label} joins tensors whose channels are laid out differently")
            return
        if axis == first.axis:
            segments = tuple(seg for i in infos for seg in i.segments)
        else:
            for i in infos[1:]:
                if not self.tie(first.segments, i.segments):
                    for j in infos:
                        self.freeze(j, f"{label} stacks tensors whose channels are laid out differently")
                    return
            segments = first.segments
        self.info[y.name] = ChanInfo(first.axis, rank, segments)

    def _op_Flatten(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, x, info = tracked[0]
        label = f"Flatten {node_label(node)}"
        shape = self.shape(x)
        a = int(_attr(node, "axis", 1))
        a = a + info.rank if a < 0 else a
        if shape is None or any(d is None for d in shape[info.axis + 1:]):
            self.freeze(info, f"{label}: the size of the dims after the channels is unknown")
            return
        if info.axis < a or any(shape[d] != 1 for d in range(a, info.axis)):
            self.freeze(info, f"{label} (axis={a}) mixes the channels with the dims before them")
            return
        inner = info.inner * math.prod(shape[info.axis + 1:])
        self.info[node.outputs[0].name] = ChanInfo(1, 2, info.segments, inner)

    def _op_Reshape(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        label = f"Reshape {node_label(node)}"
        if tracked[0][0] != 0 or len(tracked) > 1:
            self.freeze_inputs(node, f"{label} takes its target shape from the channels")
            return
        _, x, info = tracked[0]
        target = const_array(node.inputs[1])
        s_in, s_out = self.shape(x), self.shape(node.outputs[0])
        if target is None:
            self.freeze(info, f"{label}: the target shape is computed, not a constant")
            return
        if s_in is None or s_out is None or any(d is None for d in s_in) or any(d is None for d in s_out):
            self.freeze(info, f"{label}: shapes are not static")
            return
        prefix = math.prod(s_in[:info.axis])
        width = info.channels * info.inner
        rest = math.prod(s_in[info.axis + 1:])
        new = None
        for k in range(len(s_out)):
            if math.prod(s_out[:k]) != prefix:
                continue
            if s_out[k] == width and math.prod(s_out[k + 1:]) == rest:
                new = ChanInfo(k, len(s_out), info.segments, info.inner)
            elif s_out[k] == width * rest and k == len(s_out) - 1:
                new = ChanInfo(k, len(s_out), info.segments, info.inner * rest)
            if new is not None:
                break
        if new is None:
            self.freeze(info, f"{label} {s_in} -> {s_out} splits the channels")
            return
        if k < len(target) and int(target[k]) > 0:
            self.reshapes.append((node, k, node.outputs[0].name))
        elif k < len(target) and int(target[k]) == 0 and k != info.axis:
            self.freeze(info, f"{label} copies dim {k} from the input, which is not the channel dim")
            return
        self.info[node.outputs[0].name] = new

    def _axes(self, node: ir.Node, rank: int) -> list[int] | None:
        axes = _attr(node, "axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            arr = const_array(node.inputs[1])
            if arr is None:
                return None
            axes = arr.reshape(-1).tolist()
        if axes is None:
            return []
        return [int(a) + rank if int(a) < 0 else int(a) for a in axes]

    def _op_Squeeze(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, x, info = tracked[0]
        axes = self._axes(node, info.rank)
        shape = self.shape(x)
        if axes == [] and shape is not None:
            axes = [d for d, n in enumerate(shape) if n == 1]
        if axes is None or info.axis in axes or not axes:
            self.freeze(info, f"Squeeze {node_label(node)}: axes unknown or include the channel axis")
            return
        self.info[node.outputs[0].name] = info.moved(info.axis - sum(a < info.axis for a in axes),
                                                     info.rank - len(axes))

    def _op_Unsqueeze(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        out_rank = self.rank(node.outputs[0])
        axes = self._axes(node, out_rank) if out_rank is not None else None
        if axes is None or not axes:
            self.freeze(info, f"Unsqueeze {node_label(node)}: axes unknown")
            return
        kept = [d for d in range(out_rank) if d not in axes]
        self.info[node.outputs[0].name] = info.moved(kept[info.axis], out_rank)

    def _op_Transpose(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        perm = _attr(node, "perm") or list(reversed(range(info.rank)))
        if info.inner != 1:
            self.freeze(info, f"Transpose {node_label(node)} moves flattened channel features")
            return
        self.info[node.outputs[0].name] = info.moved(list(perm).index(info.axis), info.rank)

    def _reduce(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        label = f"{node.op_type} {node_label(node)}"
        if tracked[0][0] != 0:
            self.freeze(info, f"{label} takes its axes from the channels")
            return
        axes = self._axes(node, info.rank)
        if axes is None or not axes or info.axis in axes or info.inner != 1:
            self.freeze(info, f"{label} reduces over the channel axis")
            return
        keep = int(_attr(node, "keepdims", 1))
        axis = info.axis if keep else info.axis - sum(a < info.axis for a in axes)
        self.info[node.outputs[0].name] = info.moved(axis, info.rank if keep else info.rank - len(axes))

    def _softmax(self, node: ir.Node, opset: int) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        default = 1 if opset < 13 else -1
        axis = int(_attr(node, "axis", default))
        axis = axis + info.rank if axis < 0 else axis
        covers = info.axis >= axis if opset < 13 else info.axis == axis
        if covers:
            self.freeze(info, f"{node.op_type} {node_label(node)} normalizes over the channels")
            return
        self.info[node.outputs[0].name] = info

    def _op_Softmax(self, node: ir.Node) -> None:
        self._softmax(node, node.version or self.opset)

    def _op_LogSoftmax(self, node: ir.Node) -> None:
        self._softmax(node, node.version or self.opset)

    def _op_Pad(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        label = f"Pad {node_label(node)}"
        if tracked[0][0] != 0 or len(tracked) > 1:
            self.freeze_inputs(node, f"{label} takes its pads from the channels")
            return
        pads = _attr(node, "pads")
        if pads is None and len(node.inputs) > 1:
            arr = const_array(node.inputs[1])
            pads = None if arr is None else arr.tolist()
        axes = None
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            arr = const_array(node.inputs[3])
            axes = None if arr is None else [int(a) + info.rank if a < 0 else int(a) for a in arr.tolist()]
            if arr is None:
                pads = None
        if pads is None:
            self.freeze(info, f"{label}: pads are not constant")
            return
        axes = axes if axes is not None else list(range(info.rank))
        n = len(axes)
        if info.axis in axes:
            j = axes.index(info.axis)
            if pads[j] != 0 or pads[j + n] != 0:
                self.freeze(info, f"{label} pads the channel axis")
                return
        self.info[node.outputs[0].name] = info

    def _op_Resize(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        label = f"{node.op_type} {node_label(node)}"
        scales_idx = 1 if node.op_type == "Upsample" else 2
        scales = const_array(node.inputs[scales_idx]) if len(node.inputs) > scales_idx and node.inputs[scales_idx] is not None else None
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        if tracked[0][0] != 0 or sizes is not None or scales is None or scales.size != info.rank \
                or scales[info.axis] != 1:
            self.freeze(info, f"{label} resizes along the channels or by computed sizes")
            return
        self.info[node.outputs[0].name] = info

    def _op_Upsample(self, node: ir.Node) -> None:
        self._op_Resize(node)

    def _op_Slice(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        starts = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        axes = self._axes_input(node, 3, info.rank, None if starts is None else len(starts))
        if tracked[0][0] != 0 or axes is None or info.axis in axes:
            self.freeze(info, f"Slice {node_label(node)} cuts the channel axis (or computed axes)")
            return
        self.info[node.outputs[0].name] = info

    def _axes_input(self, node: ir.Node, index: int, rank: int, count: int | None) -> list[int] | None:
        if len(node.inputs) > index and node.inputs[index] is not None:
            arr = const_array(node.inputs[index])
            return None if arr is None else [int(a) + rank if a < 0 else int(a) for a in arr.tolist()]
        return None if count is None else list(range(count))

    def _op_Split(self, node: ir.Node) -> None:
        tracked = self.tracked(node)
        if not tracked:
            return
        _, _, info = tracked[0]
        axis = int(_attr(node, "axis", 0))
        axis = axis + info.rank if axis < 0 else axis
        if axis == info.axis:
            self.freeze(info, f"Split {node_label(node)} splits the channels into fixed sizes")
            return
        for out in node.outputs:
            self.info[out.name] = info

    @property
    def opset(self) -> int:
        return getattr(self, "_opset", 13)


def analyze(model: ir.Model, shapes: dict[str, list]) -> GraphAnalysis:
    analysis = GraphAnalysis(model.graph, shapes)
    analysis._opset = model.opset_imports.get("", 13)
    return analysis.run()
