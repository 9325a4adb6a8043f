"""Constant-only decode subgraphs that turn stored low-bit weights back into float32.

Everything built here reads only initializers, so the profiler can count it
as weight storage and onnxruntime runs it with no custom op:

- uniform:  int8/uint8/int4/uint4 -> DequantizeLinear [-> Cast] [-> Reshape]
- codebook: uint8/uint4 indices -> Cast -> Gather / GatherElements [-> Reshape]
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.quant.pack import pack_int4
from edgeopt.quant.qparams import QParams


def unique_name(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def add_const(graph: ir.Graph, base: str, tensor_or_array) -> ir.Value:
    """Register an initializer (a numpy array, or an ir tensor such as a PackedTensor) under a fresh name."""
    name = unique_name(graph, base)
    if isinstance(tensor_or_array, np.ndarray):
        tensor = ir.tensor(np.ascontiguousarray(tensor_or_array), name=name)
    else:
        tensor = tensor_or_array
        tensor.name = name
    value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(tensor.shape),
                     type=ir.TensorType(tensor.dtype))
    graph.register_initializer(value)
    return value


def int_tensor(values: np.ndarray, bits: int, signed: bool) -> ir.TensorProtocol:
    """Integers (already in range) as the ONNX storage type: INT4/UINT4 packed two per byte, or int8/uint8."""
    values = np.asarray(values)
    if bits == 4:
        dtype = ir.DataType.INT4 if signed else ir.DataType.UINT4
        return ir.PackedTensor(pack_int4(values), dtype, shape=values.shape)
    if bits == 8:
        return ir.tensor(values.astype(np.int8 if signed else np.uint8))
    raise ValueError(f"no ONNX storage type for {bits}-bit integers")


def tensor_bytes(tensor) -> int:
    """Bytes an initializer takes on disk / in DRAM (4-bit packed = ceil(n/2))."""
    if isinstance(tensor, np.ndarray):
        return int(tensor.nbytes)
    return int(tensor.nbytes)


def _node(graph: ir.Graph, op: str, inputs, base: str, **attrs) -> ir.Value:
    node = ir.node(op, inputs=inputs, attributes=attrs or None, name=unique_name(graph, base))
    node.outputs[0].name = unique_name(graph, f"{base}_out")
    graph.append(node)
    return node.outputs[0]


def cast_to_float(graph: ir.Graph, value: ir.Value, base: str) -> ir.Value:
    """value (a float16 constant) as float32: a Cast of a constant, which onnxruntime folds at load."""
    out = _node(graph, "Cast", [value], f"{base}_Cast", to=ir.DataType.FLOAT)
    out.shape = value.shape
    out.type = ir.TensorType(ir.DataType.FLOAT)
    return out


def float_const(graph: ir.Graph, base: str, array: np.ndarray) -> tuple[ir.Value, int]:
    """A float32 / float16 constant read as float32 (float16 through cast_to_float); (value, bytes stored)."""
    value = add_const(graph, base, array)
    if array.dtype != np.float32:
        value = cast_to_float(graph, value, base)
    return value, int(array.nbytes)


def dequantize_subgraph(graph: ir.Graph, base: str, q: np.ndarray, qp: QParams,
                        out_shape: tuple[int, ...]) -> tuple[ir.Value, int]:
    """DequantizeLinear of stored integers q (in qp's layout), reshaped to out_shape if needed.

    Returns the float32 output value and the bytes stored (integers + scales + zero points).
    """
    stored = int_tensor(q, qp.bits, qp.signed)
    q_val = add_const(graph, f"{base}_quantized", stored)
    scale = np.asarray(qp.scale)
    s_val = add_const(graph, f"{base}_scale", scale)
    inputs = [q_val, s_val]
    nbytes = tensor_bytes(stored) + int(scale.nbytes)
    if not qp.signed:
        zp = int_tensor(np.asarray(qp.zero_point), qp.bits, False)
        inputs.append(add_const(graph, f"{base}_zero_point", zp))
        nbytes += tensor_bytes(zp)
    attrs = {}
    if qp.axis is not None:
        attrs["axis"] = int(qp.axis)
    if qp.block_size is not None:
        attrs["block_size"] = int(qp.block_size)
    out = _node(graph, "DequantizeLinear", inputs, f"{base}_DequantizeLinear", **attrs)
    if scale.dtype != np.float32:
        out = _node(graph, "Cast", [out], f"{base}_Cast", to=ir.DataType.FLOAT)
    if tuple(q.shape) != tuple(out_shape):
        shape = add_const(graph, f"{base}_shape", np.asarray(out_shape, dtype=np.int64))
        out = _node(graph, "Reshape", [out, shape], f"{base}_Reshape")
    out.shape = ir.Shape(out_shape)
    out.type = ir.TensorType(ir.DataType.FLOAT)
    return out, nbytes


def codebook_subgraph(graph: ir.Graph, base: str, indices: np.ndarray, codebook: np.ndarray, bits: int,
                      gather_axis: int | None, out_shape: tuple[int, ...],
                      channel_scale: np.ndarray | None = None) -> tuple[ir.Value, int]:
    """Look stored indices up in a float32 codebook.

    Per tensor (gather_axis None): codebook [K], Gather(codebook, indices).
    Per channel: codebook and indices of the same rank, GatherElements on gather_axis.
    Indices of <= 4 bits are stored packed as UINT4, else as uint8. The codebook and channel_scale
    are stored in their own dtype (float32 or float16, the latter Cast to float32 first).
    channel_scale (broadcastable to out_shape) multiplies the looked-up values (scaled codebooks).
    """
    store_bits = 4 if bits <= 4 else 8
    stored = int_tensor(indices, store_bits, False)
    i_val = add_const(graph, f"{base}_indices", stored)
    c_val, c_bytes = float_const(graph, f"{base}_codebook", codebook)
    nbytes = tensor_bytes(stored) + c_bytes
    idx = _node(graph, "Cast", [i_val], f"{base}_Cast", to=ir.DataType.INT32)
    if gather_axis is None:
        out = _node(graph, "Gather", [c_val, idx], f"{base}_Gather", axis=0)
    else:
        out = _node(graph, "GatherElements", [c_val, idx], f"{base}_GatherElements", axis=int(gather_axis))
    if tuple(indices.shape) != tuple(out_shape):
        shape = add_const(graph, f"{base}_shape", np.asarray(out_shape, dtype=np.int64))
        out = _node(graph, "Reshape", [out, shape], f"{base}_Reshape")
    if channel_scale is not None:
        s_val, s_bytes = float_const(graph, f"{base}_channel_scale", np.asarray(channel_scale))
        out = _node(graph, "Mul", [out, s_val], f"{base}_Mul")
        nbytes += s_bytes
    out.shape = ir.Shape(out_shape)
    out.type = ir.TensorType(ir.DataType.FLOAT)
    return out, nbytes


def cast_mul_subgraph(graph: ir.Graph, base: str, q: np.ndarray, qp: QParams,
                      out_shape: tuple[int, ...]) -> tuple[ir.Value, int]:
    """The same integers decoded by Cast -> [Sub zero point] -> Mul scale (-> Reshape / Slice / Transpose
    for blocks): plain constant arithmetic that onnxruntime folds when it loads the model, so the
    host runs float32 kernels on prepacked weights. Returns the float32 value and the bytes stored."""
    scale = np.asarray(qp.scale)
    zp = np.asarray(qp.zero_point)
    trailing_pad = 0
    if qp.block_size is not None:
        axis = qp.axis % q.ndim
        moved = np.moveaxis(q, axis, -1)
        k = moved.shape[-1]
        nb = -(-k // qp.block_size)
        trailing_pad = nb * qp.block_size - k
        if trailing_pad:
            fill = np.broadcast_to(np.moveaxis(zp, axis, -1)[..., -1:], moved.shape[:-1] + (1,))
            moved = np.concatenate([moved, np.repeat(fill, trailing_pad, axis=-1)], axis=-1)
        stored_q = moved.reshape(moved.shape[:-1] + (nb, qp.block_size))
        scale = np.moveaxis(scale, axis, -1)[..., None]
        zp = np.moveaxis(zp, axis, -1)[..., None]
    else:
        stored_q = q
        if qp.axis is not None:
            view = [1] * q.ndim
            view[qp.axis % q.ndim] = q.shape[qp.axis % q.ndim]
            scale, zp = scale.reshape(view), zp.reshape(view)
    stored = int_tensor(stored_q, qp.bits, qp.signed)
    nbytes = tensor_bytes(stored)
    out = _node(graph, "Cast", [add_const(graph, f"{base}_quantized", stored)], f"{base}_Cast", to=ir.DataType.FLOAT)
    if not qp.signed:
        zp_t = int_tensor(zp, qp.bits, False)
        nbytes += tensor_bytes(zp_t)
        zp_f = _node(graph, "Cast", [add_const(graph, f"{base}_zero_point", zp_t)], f"{base}_zp_Cast",
                     to=ir.DataType.FLOAT)
        out = _node(graph, "Sub", [out, zp_f], f"{base}_Sub")
    s_val, s_bytes = float_const(graph, f"{base}_scale", scale)
    nbytes += s_bytes
    out = _node(graph, "Mul", [out, s_val], f"{base}_Mul")
    if qp.block_size is not None:
        axis = qp.axis % q.ndim
        flat = stored_q.shape[:-2] + (stored_q.shape[-2] * stored_q.shape[-1],)
        out = _node(graph, "Reshape", [out, add_const(graph, f"{base}_flat", np.asarray(flat, np.int64))],
                    f"{base}_flat_Reshape")
        if trailing_pad:
            k = q.shape[axis]
            out = _node(graph, "Slice", [out, add_const(graph, f"{base}_starts", np.asarray([0], np.int64)),
                                         add_const(graph, f"{base}_ends", np.asarray([k], np.int64)),
                                         add_const(graph, f"{base}_axes", np.asarray([-1], np.int64))],
                        f"{base}_Slice")
        if axis != q.ndim - 1:
            perm = list(range(q.ndim - 1))
            perm.insert(axis, q.ndim - 1)
            out = _node(graph, "Transpose", [out], f"{base}_Transpose", perm=perm)
    if tuple(q.shape) != tuple(out_shape) or qp.block_size is not None and tuple(q.shape) != tuple(out_shape):
        out = _node(graph, "Reshape", [out, add_const(graph, f"{base}_shape", np.asarray(out_shape, np.int64))],
                    f"{base}_Reshape")
    out.shape = ir.Shape(out_shape)
    out.type = ir.TensorType(ir.DataType.FLOAT)
    return out, nbytes
