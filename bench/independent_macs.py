"""MACs of Conv / ConvTranspose / Gemm / MatMul counted independently of edgeopt, for the bench's cross-check.

Shapes come from one onnxruntime run (graph optimizations off, so the nodes are the model's):
every MAC node's inputs and outputs are added as graph outputs; nodes inside If / Loop / Scan
bodies are read from onnxruntime's own profiler trace, which records each node's real input and
output shapes. Then textbook formulas, nothing imported from edgeopt for the counting:

- Conv: N x Cout x prod(out spatial) x (Cin / group) x prod(kernel)
- ConvTranspose, on the input side: N x Cin x prod(in spatial) x (Cout / group) x prod(kernel)
  (onnx-tool counts it like a Conv over the output, stride^2 too many)
- Gemm: M x N x K with transA / transB; MatMul: prod(broadcast batch) x M x N x K

    .venv/bin/python bench/independent_macs.py MODEL --input-shape x=1x3x320x320 [--data d.npz] [--compare]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
       "tensor(int8)": np.int8}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def macs_of(op: str, node, shapes: list[list[int] | None], out: list[int]) -> int:
    """Textbook MACs of one node from its real input shapes and output shape."""
    x, w = shapes[0], shapes[1]
    if op == "Conv":
        n, cout, spatial = out[0], out[1], out[2:]
        return n * cout * math.prod(spatial) * (x[1] // int(_attr(node, "group", 1))) * math.prod(w[2:])
    if op == "ConvTranspose":
        cout = out[1]
        return x[0] * x[1] * math.prod(x[2:]) * (cout // int(_attr(node, "group", 1))) * math.prod(w[2:])
    if op == "Gemm":
        m, k = (x[1], x[0]) if _attr(node, "transA", 0) else (x[0], x[1])
        n = w[0] if _attr(node, "transB", 0) else w[1]
        return m * n * k
    if op == "MatMul":
        a = x if len(x) > 1 else [1] + x
        b = w if len(w) > 1 else w + [1]
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        return math.prod(batch) * a[-2] * b[-1] * a[-1]
    raise ValueError(op)


def _feeds(sess, shapes: dict, data: dict) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in data:
            feeds[inp.name] = data[inp.name]
            continue
        shape = shapes.get(inp.name) or [d if isinstance(d, int) else 1 for d in inp.shape]
        dtype = _NP.get(inp.type, np.float32)
        feeds[inp.name] = (rng.standard_normal(shape) if np.issubdtype(dtype, np.floating)
                           else np.zeros(shape)).astype(dtype)
    return feeds


def _const_shapes(graph) -> dict[str, list[int]]:
    out = {i.name: list(i.dims) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            t = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if t is not None:
                out[n.output[0]] = list(t.dims)
    return out


def _top_level(model, shapes, data) -> tuple[list[dict], dict]:
    """MAC nodes of the main graph: their activations added as outputs, read from one run."""
    consts = _const_shapes(model.graph)
    wanted = []
    for node in model.graph.node:
        if node.op_type in MAC_OPS:
            wanted += [t for t in list(node.input[:2]) + [node.output[0]] if t and t not in consts]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in dict.fromkeys(wanted):
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = _feeds(sess, shapes, data)
    names = [o.name for o in sess.get_outputs()]
    real = {n: list(np.shape(v)) for n, v in zip(names, sess.run(None, feeds))}
    real.update(consts)
    rows = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in MAC_OPS:
            ins = [real.get(t) for t in node.input[:2]]
            macs = macs_of(node.op_type, node, ins, real[node.output[0]])
            rows.append({"name": node.name or f"{node.op_type}_{i}", "op": node.op_type, "macs": macs,
                         "inputs": ins, "output": real[node.output[0]], "source": "graph outputs"})
    return rows, feeds


def _subgraph_nodes(model) -> dict[str, onnx.NodeProto]:
    """Name -> node for every MAC node inside a body (onnxruntime's trace names nodes by name)."""
    found = {}

    def walk(graph, inside):
        for node in graph.node:
            if inside and node.op_type in MAC_OPS and node.name:
                found[node.name] = node
            for a in node.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(g, True)
    walk(model.graph, False)
    return found


def _in_bodies(model, feeds) -> list[dict]:
    """MAC nodes inside If / Loop / Scan bodies, shapes from onnxruntime's profiler trace."""
    nodes = _subgraph_nodes(model)
    if not nodes:
        return []
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "trace")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    rows, seen = [], set()
    for ev in events:
        args = ev.get("args", {})
        name = ev.get("name", "").removesuffix("_kernel_time")
        if ev.get("cat") != "Node" or name not in nodes or name in seen or "input_type_shape" not in args:
            continue
        seen.add(name)
        node = nodes[name]
        ins = [list(next(iter(d.values()))) for d in args["input_type_shape"]]
        out = list(next(iter(args["output_type_shape"][0].values())))
        rows.append({"name": name, "op": node.op_type, "macs": macs_of(node.op_type, node, ins, out),
                     "inputs": ins[:2], "output": out, "source": "onnxruntime trace (subgraph)"})
    return rows


def independent_macs(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None,
                     data: dict | None = None) -> dict:
    rows, feeds = _top_level(model, shapes or {}, data or {})
    rows += _in_bodies(model, feeds)
    by_op: dict[str, int] = {}
    for r in rows:
        by_op[r["op"]] = by_op.get(r["op"], 0) + r["macs"]
    return {"macs": sum(by_op.values()), "by_op": dict(sorted(by_op.items())), "nodes": rows, "feeds": feeds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", action="append", default=[], help="NAME=1x3x224x224")
    ap.add_argument("--data", help=".npz with one array per input (e.g. silero's sr=16000)")
    ap.add_argument("--compare", action="store_true", help="also edgeopt's count, per op type")
    args = ap.parse_args(argv)
    shapes = {}
    for spec in args.input_shape:
        name, _, dims = spec.partition("=")
        shapes[name] = [int(d) for d in dims.split("x")]
    data = dict(np.load(args.data)) if args.data else {}
    model = onnx.load(args.model)
    result = independent_macs(model, shapes, data)
    out = {"model": args.model, "macs": result["macs"], "by_op": result["by_op"],
           "nodes_from_subgraphs": sum(1 for r in result["nodes"] if r["source"] != "graph outputs")}
    if args.compare:  # the comparison only: the count above imports nothing from edgeopt
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from edgeopt.profile import profile_on_devices
        fix = {k: list(v.shape) for k, v in data.items() if v.ndim}
        prof = profile_on_devices(model, [None], {**fix, **shapes}, result["feeds"])[0]
        mine: dict[str, int] = {}
        for layer in prof.layers:
            if layer["op_type"] in MAC_OPS and layer["counted"]:
                mine[layer["op_type"]] = mine.get(layer["op_type"], 0) + (layer["macs"] or 0)
        out["edgeopt_by_op"] = dict(sorted(mine.items()))
        out["edgeopt_macs"] = sum(mine.values())
        out["ratio"] = out["edgeopt_macs"] / out["macs"] if out["macs"] else None
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
