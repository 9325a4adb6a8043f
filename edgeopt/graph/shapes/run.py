"""The last resort for shapes: run the model once in onnxruntime and record what each value is."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgeopt.graph.session import open_session
from edgeopt.graph.shapes.fix import clear_shapes
from edgeopt.graph.shapes.inputs import graph_inputs
from edgeopt.graph.shapes.light import set_dims

RANDOM_SEED = 0


def run_values(model: onnx.ModelProto, input_shapes: dict[str, list[int]], names: list[str],
               feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The named top-level values of one onnxruntime run at `input_shapes`.

    Runs on `feeds` cut to input_shapes where they fit (the caller's real inputs: a sample rate,
    token ids, ...), else on seeded random floats and integer zeros. Returns {} when onnxruntime
    cannot load or run the model: those values stay unknown.
    """
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    clear_shapes(probe.graph)
    for vi in probe.graph.input:
        if vi.name in input_shapes:
            set_dims(vi, input_shapes[vi.name])
    outputs = {o.name for o in probe.graph.output}
    for out in probe.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    wanted = [n for n in dict.fromkeys(names) if n not in outputs]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
    options.intra_op_num_threads = 1
    try:
        session = open_session(probe, options)
        run_names = [o.name for o in session.get_outputs()]
        results = session.run(run_names, _feeds(model, input_shapes, feeds))
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types; the shapes stay unknown
        return {}
    want = set(names)
    return {name: value for name, value in zip(run_names, results) if name in want and isinstance(value, np.ndarray)}


def observed_conditions(model: onnx.ModelProto, input_shapes: dict[str, list[int]],
                        feeds: dict[str, np.ndarray] | None) -> dict[str, bool]:
    """The value each top-level If's condition takes on the caller's real inputs (a sample rate
    that picks the 16 kHz branch). Only with feeds: on made-up inputs a condition means nothing."""
    conds = [n.input[0] for n in model.graph.node if n.op_type == "If" and n.input and n.input[0]]
    if not feeds or not conds:
        return {}
    inits = {t.name for t in model.graph.initializer}
    conds = [c for c in conds if c not in inits]
    return {name: bool(np.asarray(v).reshape(-1)[0]) for name, v in run_values(model, input_shapes, conds, feeds).items()
            if np.size(v) == 1}


def shapes_of(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, list[int]]]:
    return {name: (helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for name, a in arrays.items()}


def branch_model(model: onnx.ModelProto, branch: onnx.GraphProto, outer: dict[str, np.ndarray]) -> onnx.ModelProto:
    """An If branch as a model of its own whose inputs are the outer values it reads."""
    graph = onnx.GraphProto()
    graph.CopyFrom(branch)
    del graph.input[:]
    graph.input.extend(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                       for n, a in outer.items())
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _feeds(model: onnx.ModelProto, input_shapes: dict[str, list[int]],
           feeds: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(RANDOM_SEED)
    out = {}
    for vi in graph_inputs(model):
        shape = list(input_shapes[vi.name])
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        given = _cut((feeds or {}).get(vi.name), shape)
        if given is not None:
            out[vi.name] = given.astype(dtype, copy=False)
        elif np.issubdtype(dtype, np.floating):
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[vi.name] = np.zeros(shape, dtype=dtype)
    return out


def _cut(array: np.ndarray | None, shape: list[int]) -> np.ndarray | None:
    """The leading part of `array` with exactly `shape` (the first samples), or None if it is smaller."""
    if array is None or np.ndim(array) != len(shape):
        return None
    array = np.asarray(array)
    if any(have < want for have, want in zip(array.shape, shape)):
        return None
    return np.array(array[tuple(slice(0, d) for d in shape)])
