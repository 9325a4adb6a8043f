"""sparsify: fine-grained magnitude pruning of Conv / Gemm / MatMul weights to a target sparsity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array, to_ir, to_proto
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.prune.criteria import folded_scale
from edgeopt.prune.groups import node_label
from edgeopt.prune.plan import match

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Params:
    sparsity: float | dict[str, float] = param(
        0.5, "fraction of weights set to zero; or a mapping of layer-name glob -> fraction (first match "
             "wins, unmatched layers are left dense)", ge=0, lt=1)
    scope: Literal["auto", "global", "per_layer"] = param(
        "auto", "global: one magnitude threshold over all layers (small layers such as the first conv lose "
                "less; far more accurate on the digits nets); per_layer: every layer reaches the sparsity; "
                "auto: global for one number, per_layer for a mapping")
    pattern: Literal["unstructured", "2:4"] = param(
        "unstructured", "unstructured: any weight may go; 2:4: in every 4 consecutive input weights the 2 "
                        "smallest go (50 %, the pattern sparse tensor cores run); sparsity is then ignored")
    exclude: list[str] = param(default_factory=list, help="layer-name globs left dense")
    min_weights: int = param(0, "leave layers with fewer weights than this dense", ge=0)

    def __post_init__(self):
        if self.scope == "auto":
            self.scope = "per_layer" if isinstance(self.sparsity, dict) else "global"
        if self.scope == "global" and isinstance(self.sparsity, dict):
            raise ValueError("sparsify: scope: global takes one sparsity number, not a mapping "
                             "(use scope: per_layer for per-layer values)")


def sparse_bytes(array: np.ndarray) -> int:
    """Bytes of a sparse encoding: the non-zero values plus the cheaper of a bitmask or 16-bit indices.

    The profiler's estimate (edgeopt/profile/weights.py) uses the same encoding.
    """
    nnz = int(np.count_nonzero(array))
    return int(nnz * array.dtype.itemsize + min(math.ceil(array.size / 8), 2 * nnz))


def _smallest(mags: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k smallest magnitudes (ties: lower index first)."""
    return np.argsort(mags, kind="stable")[:k]


def _two_four(w: np.ndarray, in_axis: int) -> np.ndarray | None:
    """Zero the 2 smallest of every 4 consecutive weights along the input axis (None if it is not a multiple of 4)."""
    moved = np.moveaxis(w, in_axis, -1)
    if moved.shape[-1] % 4:
        return None
    blocks = moved.reshape(-1, 4)
    drop = np.argsort(np.abs(blocks), axis=1, kind="stable")[:, :2]
    out = blocks.copy()
    np.put_along_axis(out, drop, 0, axis=1)
    return np.moveaxis(out.reshape(moved.shape), -1, in_axis)


@register
class Sparsify(Pass):
    name = "sparsify"
    summary = "Zero the smallest weights of Conv/Gemm/MatMul layers to a target sparsity (fine-grained)"
    description = (
        "Magnitude pruning of single weights, per layer or with one global threshold, or in the 2:4 "
        "pattern; a weight's magnitude counts the scale of a BatchNormalization right after its layer, so "
        "the result is the same before or after fold_batchnorm. Shapes and MACs do not change: fine-grained sparsity pays only where the weights are "
        "stored compressed (a device profile with sparse_weights: true) or the hardware skips zeros. "
        "The notes give, per layer, the dense bytes and the sparse-encoded bytes (non-zeros plus a "
        "bitmask or 16-bit indices); the profiler counts the sparse bytes only on such devices. "
        "Biases and non-float (already quantized) weights are left alone; a weight shared by several "
        "layers is sparsified once."
    )
    lossless = False
    advice = "a lower sparsity, or per-layer sparsity (a mapping) that spares the sensitive layers"
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        ir_model = to_ir(model)
        graph = ir_model.graph
        notes: list[NodeNote] = []
        weights: dict[str, dict] = {}  # by weight name: the array, its readers, in-axis, target
        for node in graph:
            if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
                continue
            label = node_label(node)
            value = node.inputs[1]
            arr = const_array(value)
            if arr is None:
                notes.append(NodeNote(label, node.op_type, "skipped", "W is not a constant"))
                continue
            if not np.issubdtype(arr.dtype, np.floating):
                notes.append(NodeNote(label, node.op_type, "skipped", f"W is {arr.dtype}, not float"))
                continue
            entry = weights.setdefault(value.name, {"array": arr, "nodes": [], "in_axis": self._in_axis(node)})
            entry["nodes"].append(node)
            entry["importance"] = self._importance(arr, node) if len(entry["nodes"]) == 1 else np.abs(arr)

        targets: dict[str, float] = {}
        for name, entry in weights.items():
            labels = [node_label(n) for n in entry["nodes"]]
            op = entry["nodes"][0].op_type
            pattern = match(params.exclude, labels)
            if pattern is not None:
                notes.append(NodeNote(labels[0], op, "skipped", f"excluded by {pattern!r}"))
                continue
            if entry["array"].size < params.min_weights:
                notes.append(NodeNote(labels[0], op, "skipped",
                                      f"{entry['array'].size} weights < min_weights {params.min_weights}"))
                continue
            if isinstance(params.sparsity, dict):
                pattern = match(params.sparsity, labels)
                if pattern is None:
                    notes.append(NodeNote(labels[0], op, "skipped", "no sparsity glob matches"))
                    continue
                targets[name] = params.sparsity[pattern]
            else:
                targets[name] = float(params.sparsity)

        new_arrays = self._sparsify(weights, targets, params, notes)
        dense_total = sparse_total = zeros_total = count_total = 0
        for name, arr in new_arrays.items():
            entry = weights[name]
            old = entry["array"]
            value = add_initializer(graph, f"{name}_sparse", arr.astype(old.dtype))
            for node in entry["nodes"]:
                node.replace_input_with(1, value)
            zeros = int(arr.size - np.count_nonzero(arr))
            dense, sparse = int(arr.nbytes), sparse_bytes(arr)
            dense_total += dense
            sparse_total += sparse
            zeros_total += zeros
            count_total += arr.size
            labels = [node_label(n) for n in entry["nodes"]]
            notes.append(NodeNote(labels[0], entry["nodes"][0].op_type, "sparsified",
                                  f"{100 * zeros / arr.size:.1f}% zeros" + (
                                      f" (shared with {', '.join(labels[1:])})" if len(labels) > 1 else ""),
                                  {"weights": int(arr.size), "zeros_before": int(old.size - np.count_nonzero(old)),
                                   "zeros": zeros, "dense_bytes": dense, "sparse_bytes": sparse}))
        if not new_arrays:
            return PassResult(model, False, notes, "no layer sparsified")
        summary = (f"{100 * zeros_total / count_total:.1f}% of {count_total:,} weights zero in "
                   f"{len(new_arrays)} tensors; {dense_total:,} B dense, {sparse_total:,} B sparse-encoded "
                   "(counted only on devices with sparse weight storage)")
        return PassResult(to_proto(ir_model), True, notes, summary)

    @staticmethod
    def _importance(arr: np.ndarray, node: ir.Node) -> np.ndarray:
        """|w|, times the scale of a BatchNormalization right after (as if folded: same ranking either way)."""
        scale = folded_scale(node)
        out_axis = {"Conv": 0, "MatMul": 1}.get(node.op_type, 1 - Sparsify._in_axis(node))
        if scale is None or arr.ndim < 2 or len(scale) != arr.shape[out_axis]:
            return np.abs(arr)
        shape = [1] * arr.ndim
        shape[out_axis] = len(scale)
        return np.abs(arr) * np.abs(scale).reshape(shape)

    @staticmethod
    def _in_axis(node: ir.Node) -> int:
        if node.op_type == "Conv":
            return 1
        if node.op_type == "Gemm":
            attr = node.attributes.get("transB")
            return 1 if attr is not None and attr.value else 0
        return 0

    def _sparsify(self, weights: dict, targets: dict[str, float], params: Params,
                  notes: list[NodeNote]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if params.pattern == "2:4":
            for name in targets:
                entry = weights[name]
                arr = _two_four(entry["array"], entry["in_axis"])
                if arr is None:
                    notes.append(NodeNote(node_label(entry["nodes"][0]), entry["nodes"][0].op_type, "skipped",
                                          f"input size {entry['array'].shape[entry['in_axis']]} is not a multiple of 4 (2:4)"))
                    continue
                out[name] = arr
            return out
        if params.scope == "global":
            names = [n for n in targets]
            if not names:
                return out
            mags = np.concatenate([weights[n]["importance"].reshape(-1).astype(np.float64) for n in names])
            drop = _smallest(mags, int(math.floor(float(params.sparsity) * mags.size)))
            mask = np.ones(mags.size, dtype=bool)
            mask[drop] = False
            start = 0
            for n in names:
                arr = weights[n]["array"]
                flat = arr.reshape(-1) * mask[start:start + arr.size]
                start += arr.size
                out[n] = flat.reshape(arr.shape).astype(arr.dtype)
            return out
        for name, target in targets.items():
            arr = weights[name]["array"]
            flat = arr.reshape(-1).copy()
            flat[_smallest(weights[name]["importance"].reshape(-1), int(math.floor(target * flat.size)))] = 0
            out[name] = flat.reshape(arr.shape)
        return out
