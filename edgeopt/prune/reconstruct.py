"""Least-squares reconstruction after pruning (He et al. 2017; ThiNet; AIMET's channel pruning).

Each layer that reads pruned channels (a Conv, Gemm or MatMul consumer) gets
new weights and bias, fitted by ridge regression so that its output on the
*pruned* network's input matches what the *original* network's layer
produced on the calibration data. Layers are refitted in graph order, each on
the input the already-refitted layers before it produce, so errors do not
pile up. No retraining, no labels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.edit import add_initializer, const_array
from edgeopt.passes.base import NodeNote
from edgeopt.prune.groups import _attr, node_label
from edgeopt.prune.im2col import conv_geometry, patches, sample_positions
from edgeopt.prune.probe import Probe, subsample

RIDGE = 1e-4  # relative to the mean diagonal of A^T A
MAX_ROWS = 20000


def _solve(a: np.ndarray, t: np.ndarray, intercept: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Ridge least squares t ~ a @ w (+ b); returns w [d, o] and b [o] (b None without intercept)."""
    a = a.astype(np.float64)
    t = t.astype(np.float64)
    if intercept:
        a_mean, t_mean = a.mean(axis=0), t.mean(axis=0)
        a, t = a - a_mean, t - t_mean
    gram = a.T @ a
    lam = RIDGE * max(float(np.mean(np.diag(gram))), 1e-12)
    w = np.linalg.solve(gram + lam * np.eye(len(gram)), a.T @ t)
    if not intercept:
        return w, None
    return w, t_mean - a_mean @ w


def _find(graph: ir.Graph, output: str) -> ir.Node | None:
    return next((n for n in graph if n.outputs and n.outputs[0].name == output), None)


def refit(original: onnx.ModelProto, pruned: ir.Model, consumers: list[str], out_positions: dict[str, np.ndarray],
          data: dict[str, np.ndarray], max_samples: int, seed: int) -> list[NodeNote]:
    """Refit, in place on `pruned`, the layers producing the tensors `consumers` (by output name)."""
    rng = np.random.default_rng(seed)
    sample = subsample(data, max_samples, seed)
    graph = pruned.graph
    order = {n.outputs[0].name: i for i, n in enumerate(graph) if n.outputs}
    notes = []
    for y in sorted(consumers, key=lambda name: order.get(name, 1 << 30)):
        node = _find(graph, y)
        if node is None:
            continue
        x = node.inputs[0]
        label = node_label(node)
        w = const_array(node.inputs[1])
        if w is None:
            continue
        y_orig = Probe(original, [y]).all(sample)[y]
        x_now = Probe(ir.to_proto(pruned), [x.name]).all(sample)[x.name]
        keep_out = out_positions.get(y)
        if keep_out is not None:
            y_orig = np.take(y_orig, keep_out, axis=1 if node.op_type != "MatMul" else y_orig.ndim - 1)
        if node.op_type == "Conv":
            note = _refit_conv(graph, node, w, x_now, y_orig, rng)
        elif node.op_type == "Gemm":
            note = _refit_gemm(graph, node, w, x_now, y_orig)
        else:
            note = _refit_matmul(graph, node, w, x_now, y_orig)
        if note is not None:
            note.node = label
            notes.append(note)
    return notes


def _rel_error(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(pred - target) / max(np.linalg.norm(target), 1e-12))


def _refit_conv(graph, node, w, x, y, rng) -> NodeNote | None:
    if int(_attr(node, "group", 1)) != 1 or w.ndim != 4:
        return NodeNote("", "Conv", "not refitted", "only 2-D convs with group=1 are refitted")
    geom = conv_geometry(node, x.shape[2:], w.shape[2:])
    if geom is None or tuple(geom.out_hw) != tuple(y.shape[2:]):
        return NodeNote("", "Conv", "not refitted", "conv geometry not understood")
    o, c, kh, kw = w.shape
    d = c * kh * kw
    rows = int(min(MAX_ROWS, max(8 * d, 2000)))
    where = sample_positions(x.shape[0], geom.out_hw, rows, rng)
    a = patches(x, geom, where).reshape(len(where[0]), d)
    t = y[where[0], :, where[1], where[2]]
    b_old = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    before = a.astype(np.float64) @ w.reshape(o, d).T.astype(np.float64) + (0 if b_old is None else b_old)
    sol, bias = _solve(a, t, intercept=True)
    after = a @ sol + bias
    new_w = sol.T.reshape(o, c, kh, kw).astype(w.dtype)
    node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_refit", new_w))
    b_val = add_initializer(graph, f"{node_label(node)}.bias_refit", bias.astype(w.dtype))
    if len(node.inputs) > 2:
        node.replace_input_with(2, b_val)
    else:
        node.resize_inputs(3)
        node.replace_input_with(2, b_val)
    return NodeNote("", "Conv", "refitted", "least squares on calibration data",
                    {"rows": int(len(a)), "rel_error_before": round(_rel_error(before, t), 5),
                     "rel_error_after": round(_rel_error(after, t), 5)})


def _refit_gemm(graph, node, w, x, y) -> NodeNote | None:
    alpha = float(_attr(node, "alpha", 1.0))
    beta = float(_attr(node, "beta", 1.0))
    trans_b = int(_attr(node, "transB", 0))
    mat = w.T if trans_b else w  # [K, O]
    c_val = node.inputs[2] if len(node.inputs) > 2 else None
    c_arr = const_array(c_val) if c_val is not None else None
    a = x.reshape(len(x), -1)
    before = alpha * (a.astype(np.float64) @ mat) + (0 if c_arr is None else beta * c_arr)
    use_bias = beta != 0 and alpha != 0
    sol, bias = _solve(a, y, intercept=use_bias)
    after = a @ sol + (bias if bias is not None else 0)
    new_mat = (sol / alpha).astype(w.dtype)
    node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_refit",
                                               np.ascontiguousarray(new_mat.T if trans_b else new_mat)))
    if use_bias:
        shape = (len(bias),) if c_arr is None or c_arr.ndim < 2 else (1, len(bias))
        new_c = add_initializer(graph, f"{node_label(node)}.bias_refit", (bias / beta).reshape(shape).astype(w.dtype))
        if c_val is None:
            node.resize_inputs(3)
        node.replace_input_with(2, new_c)
    return NodeNote("", "Gemm", "refitted", "least squares on calibration data",
                    {"rows": int(len(a)), "rel_error_before": round(_rel_error(before, y), 5),
                     "rel_error_after": round(_rel_error(after, y), 5)})


def _refit_matmul(graph, node, w, x, y) -> NodeNote | None:
    a = x.reshape(-1, x.shape[-1])
    t = y.reshape(-1, y.shape[-1])
    if len(a) > MAX_ROWS:
        a, t = a[:MAX_ROWS], t[:MAX_ROWS]
    before = a.astype(np.float64) @ w
    sol, _ = _solve(a, t, intercept=False)
    node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_refit", sol.astype(w.dtype)))
    return NodeNote("", "MatMul", "refitted", "least squares on calibration data (no bias)",
                    {"rows": int(len(a)), "rel_error_before": round(_rel_error(before, t), 5),
                     "rel_error_after": round(_rel_error(a @ sol, t), 5)})
