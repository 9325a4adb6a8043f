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
from edgeopt.pass_types import NodeNote
from edgeopt.prune.groups import _attr, node_label
from edgeopt.prune.im2col import conv_geometry, patches, sample_positions
from edgeopt.graph.activations import Footprint, footprint
from edgeopt.prune.probe import Probe, common_chunk, subsample
from edgeopt.verify.feeds import sample_count

RIDGE = 1e-3  # relative to the mean diagonal of A^T A (1e-4..1e-2 within 0.4 points on the digits nets)
MAX_ROWS = 20000  # regression rows per layer (sampled output positions)
CHUNK = 64  # calibration samples per chunk (fewer when a layer's values would not fit; runs stay bounded)
WHAT = "reconstruction: collecting layer inputs and outputs"


class NormalEquations:
    """Accumulates, chunk by chunk, the least-squares problem t ~ a @ w (+ b) and solves it (ridge)."""

    def __init__(self, intercept: bool):
        self.intercept = intercept
        self.ata = self.atb = None
        self.ttt = 0.0
        self.rows = 0

    def add(self, a: np.ndarray, t: np.ndarray) -> None:
        a = a.astype(np.float64)
        t = t.astype(np.float64)
        if self.intercept:
            a = np.hstack([a, np.ones((len(a), 1))])
        ata, atb = a.T @ a, a.T @ t
        self.ata = ata if self.ata is None else self.ata + ata
        self.atb = atb if self.atb is None else self.atb + atb
        self.ttt += float(np.sum(t * t))
        self.rows += len(a)

    def solve(self) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Weights [d, o], bias [o] (None without intercept), relative error of the fit."""
        d = len(self.ata) - (1 if self.intercept else 0)
        lam = RIDGE * max(float(np.mean(np.diag(self.ata)[:d])), 1e-12)
        reg = np.zeros(len(self.ata))
        reg[:d] = lam
        sol = np.linalg.solve(self.ata + np.diag(reg), self.atb)
        sse = self.ttt - 2 * float(np.sum(sol * self.atb)) + float(np.sum(sol * (self.ata @ sol)))
        rel = float(np.sqrt(max(sse, 0.0) / max(self.ttt, 1e-24)))
        return sol[:d], (sol[d] if self.intercept else None), rel


def _find(graph: ir.Graph, output: str) -> ir.Node | None:
    return next((n for n in graph if n.outputs and n.outputs[0].name == output), None)


class TargetCache:
    """The original network's outputs of the refitted layers, kept across prune_model calls on the same
    model, data, max_samples and seed (the sensitivity scan and ratio: auto refit hundreds of times): each
    layer's target is computed once. Bounded: past max_bytes, targets are recomputed as without it."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes, self.bytes = max_bytes, 0
        self.chunks: dict[str, list[np.ndarray]] = {}
        self.key = None

    def accepts(self, original: onnx.ModelProto, data: dict, max_samples: int, seed: int) -> bool:
        """True when these are the model, data and sampling of the first call (else the cache is bypassed)."""
        key = (id(original), id(data), max_samples, seed)
        self.key = self.key or key
        return self.key == key

    def get(self, original: onnx.ModelProto, y_name: str, sample: dict[str, np.ndarray], chunk: int = CHUNK,
            fp: Footprint | None = None):
        if y_name in self.chunks:
            return [{y_name: c} for c in self.chunks[y_name]]
        if self.bytes >= self.max_bytes:
            return Probe(original, [y_name], fp, WHAT).chunks(sample, chunk)
        chunks = [c[y_name] for c in Probe(original, [y_name], fp, WHAT).chunks(sample, chunk)]
        size = sum(c.nbytes for c in chunks)
        if self.bytes + size <= self.max_bytes:
            self.chunks[y_name] = chunks
        self.bytes += size
        return [{y_name: c} for c in chunks]


def refit(original: onnx.ModelProto, pruned: ir.Model, consumers: list[str], out_positions: dict[str, np.ndarray],
          data: dict[str, np.ndarray], max_samples: int, seed: int,
          cache: TargetCache | None = None) -> list[NodeNote]:
    """Refit, in place on `pruned`, the layers producing the tensors `consumers` (by output name).
    cache: the original's layer outputs from earlier calls on the same model, data, max_samples, seed."""
    if cache is not None and not cache.accepts(original, data, max_samples, seed):
        cache = None
    rng = np.random.default_rng(seed)
    sample = subsample(data, max_samples, seed)
    fp = footprint(original, sample)  # the pruned model's values are no larger than the original's
    graph = pruned.graph
    order = {n.outputs[0].name: i for i, n in enumerate(graph) if n.outputs}
    known = {o for n in original.graph.node for o in n.output}
    notes = []
    for y_name in sorted(consumers, key=lambda name: order.get(name, 1 << 30)):
        node = _find(graph, y_name)
        if node is None:
            continue
        label = node_label(node)
        w = const_array(node.inputs[1])
        if w is None or y_name not in known:
            notes.append(NodeNote(label, node.op_type, "not refitted", "weight or original output not found"))
            continue
        x_name = node.inputs[0].name
        chunk = common_chunk(fp, [y_name, x_name], CHUNK)  # the two streams are read in step
        n_chunks = -(-sample_count(sample) // chunk)
        fitter = {"Conv": _ConvFit, "Gemm": _GemmFit, "MatMul": _MatMulFit}[node.op_type](node, w, n_chunks, rng)
        if fitter.problem:
            notes.append(NodeNote(label, node.op_type, "not refitted", fitter.problem))
            continue
        keep_out = out_positions.get(y_name)
        targets = cache.get(original, y_name, sample, chunk, fp) if cache is not None else \
            Probe(original, [y_name], fp, WHAT).chunks(sample, chunk)
        inputs = Probe(ir.to_proto(pruned), [x_name], fp, WHAT).chunks(sample, chunk)
        for y_chunk, x_chunk in zip(targets, inputs):
            y = y_chunk[y_name]
            if keep_out is not None:
                y = np.take(y, keep_out, axis=y.ndim - 1 if node.op_type == "MatMul" else 1)
            if not fitter.add(x_chunk[x_name], y):
                break
        if fitter.problem:
            notes.append(NodeNote(label, node.op_type, "not refitted", fitter.problem))
            continue
        note = fitter.write(graph, label)
        note.node = label
        notes.append(note)
    return notes


class _Fit:
    def __init__(self, node, w, n_chunks, rng, intercept: bool):
        self.node, self.w, self.n_chunks, self.rng = node, w, n_chunks, rng
        self.eq = NormalEquations(intercept)
        self.sse_before = 0.0
        self.problem = ""

    def _before(self, pred: np.ndarray, t: np.ndarray) -> None:
        self.sse_before += float(np.sum((pred - t.astype(np.float64)) ** 2))

    def note(self, op: str, rel_after: float, reason: str = "least squares on calibration data") -> NodeNote:
        rel_before = float(np.sqrt(self.sse_before / max(self.eq.ttt, 1e-24)))
        reason += f": relative output error {rel_before:.3g} -> {rel_after:.3g}"
        return NodeNote("", op, "refitted", reason, {"rows": self.eq.rows, "rel_error_before": round(rel_before, 5),
                                                     "rel_error_after": round(rel_after, 5)})


class _ConvFit(_Fit):
    def __init__(self, node, w, n_chunks, rng):
        super().__init__(node, w, n_chunks, rng, intercept=True)
        self.geom = None
        if int(_attr(node, "group", 1)) != 1 or w.ndim != 4:
            self.problem = "only 2-D convs with group=1 are refitted"
        b = node.inputs[2] if len(node.inputs) > 2 else None
        self.b_old = const_array(b) if b is not None else None

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        o, c, kh, kw = self.w.shape
        d = c * kh * kw
        if self.geom is None:
            self.geom = conv_geometry(self.node, x.shape[2:], self.w.shape[2:])
            if self.geom is None or tuple(self.geom.out_hw) != tuple(y.shape[2:]):
                self.problem = "conv geometry not understood"
                return False
        rows = int(min(MAX_ROWS, max(8 * d, 2000)))
        where = sample_positions(x.shape[0], self.geom.out_hw, -(-rows // self.n_chunks), self.rng)
        a = patches(x, self.geom, where).reshape(len(where[0]), d)
        t = y[where[0], :, where[1], where[2]]
        self._before(a.astype(np.float64) @ self.w.reshape(o, d).T.astype(np.float64)
                     + (0 if self.b_old is None else self.b_old), t)
        self.eq.add(a, t)
        return True

    def write(self, graph, label) -> NodeNote:
        sol, bias, rel = self.eq.solve()
        node, w = self.node, self.w
        node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_refit",
                                                   sol.T.reshape(w.shape).astype(w.dtype)))
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, add_initializer(graph, f"{label}.bias_refit", bias.astype(w.dtype)))
        return self.note("Conv", rel)


class _GemmFit(_Fit):
    def __init__(self, node, w, n_chunks, rng):
        self.alpha = float(_attr(node, "alpha", 1.0))
        self.beta = float(_attr(node, "beta", 1.0))
        super().__init__(node, w, n_chunks, rng, intercept=self.beta != 0 and self.alpha != 0)
        self.trans_b = int(_attr(node, "transB", 0))
        self.c_val = node.inputs[2] if len(node.inputs) > 2 else None
        self.c_arr = const_array(self.c_val) if self.c_val is not None else None
        if self.alpha == 0:
            self.problem = "alpha is 0"

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        a = x.reshape(len(x), -1)
        mat = self.w.T if self.trans_b else self.w
        self._before(self.alpha * (a.astype(np.float64) @ mat) + (0 if self.c_arr is None else self.beta * self.c_arr), y)
        self.eq.add(a, y)
        return True

    def write(self, graph, label) -> NodeNote:
        sol, bias, rel = self.eq.solve()
        node, w = self.node, self.w
        new = (sol / self.alpha).astype(w.dtype)
        node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}_refit",
                                                   np.ascontiguousarray(new.T if self.trans_b else new)))
        if bias is not None:
            shape = (len(bias),) if self.c_arr is None or self.c_arr.ndim < 2 else (1, len(bias))
            c = add_initializer(graph, f"{label}.bias_refit", (bias / self.beta).reshape(shape).astype(w.dtype))
            if self.c_val is None:
                node.resize_inputs(3)
            node.replace_input_with(2, c)
        return self.note("Gemm", rel)


class _MatMulFit(_Fit):
    def __init__(self, node, w, n_chunks, rng):
        super().__init__(node, w, n_chunks, rng, intercept=False)
        if w.ndim != 2:
            self.problem = "only a constant matrix B is refitted"

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        a = x.reshape(-1, x.shape[-1])
        t = y.reshape(-1, y.shape[-1])
        rows = -(-MAX_ROWS // self.n_chunks)
        if len(a) > rows:
            pick = np.sort(self.rng.choice(len(a), size=rows, replace=False))
            a, t = a[pick], t[pick]
        self._before(a.astype(np.float64) @ self.w, t)
        self.eq.add(a, t)
        return True

    def write(self, graph, label) -> NodeNote:
        sol, _, rel = self.eq.solve()
        self.node.replace_input_with(1, add_initializer(graph, f"{self.node.inputs[1].name}_refit",
                                                        sol.astype(self.w.dtype)))
        return self.note("MatMul", rel, "least squares on calibration data (no bias)")
