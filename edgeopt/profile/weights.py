"""Weight storage: which stored tensors feed a layer, their bytes by type, precision and sparsity.

A layer's weights are its constant inputs. A constant input computed by a
"weight decode" subgraph (DequantizeLinear of int8 / int4, Cast of fp16,
Gather of a codebook with uint8 or packed 4-bit indices, bit unpacking) is
traced back to the stored initializers it is decoded from: those are the
bytes on disk and in memory, and the widest of them sets the layer's stored
weight precision. `params_count` counts the elements of the decoded tensor
the layer receives, so it does not change when a pass quantizes weights.

Sparse weights: a stored tensor with at least 50 % zeros gets an estimated
sparse-encoded size: the non-zero values plus the cheaper of a bitmask
(1 bit per element) or 16-bit indices (2 bytes per non-zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeopt.profile.graphinfo import (INDEX_TYPES, GraphInfo, dtype_name, itemsize, precision_of,
                                       storage_bytes)

SPARSE_MIN_ZERO_FRACTION = 0.5
_UNPACK_OPS = {"BitShift", "BitwiseAnd"}  # in-graph nibble unpacking -> 4-bit storage
_PRECISION_RANK = {"int4": 0, "int8": 1, "fp16": 2, "fp32": 3}


@dataclass
class StoredTensor:
    """One stored constant (initializer or Constant value)."""

    name: str
    elem_type: int | None
    numel: int
    dense_bytes: int
    sparse_bytes: int | None = None  # set when >= 50 % zeros
    zero_fraction: float | None = None

    def bytes_on(self, sparse_ok: bool) -> int:
        if sparse_ok and self.sparse_bytes is not None:
            return min(self.sparse_bytes, self.dense_bytes)
        return self.dense_bytes


@dataclass
class LayerWeights:
    params_count: int = 0
    roots: list[str] = field(default_factory=list)  # stored tensors first used by this layer
    precision: str | None = None  # stored weight precision of the main weight
    decode_ops: set[str] = field(default_factory=set)  # op types of the main weight's decode subgraph


class WeightTable:
    """Stored tensors of a graph, measured once (sparsity needs the values: read as numpy views)."""

    def __init__(self, info: GraphInfo):
        self.info = info
        self.stored: dict[str, StoredTensor] = {}
        self.owner: dict[str, int] = {}  # stored tensor -> first layer (node index) using it
        self._seen_delivered: set[str] = set()

    def _proto(self, name: str) -> onnx.TensorProto | None:
        init = self.info.initializers.get(name)
        if init is not None:
            return init
        idx = self.info.producer.get(name)
        if idx is not None and self.info.nodes[idx].op_type == "Constant":
            for a in self.info.nodes[idx].attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return a.t
        return None

    def stored_tensor(self, name: str) -> StoredTensor | None:
        if name in self.stored:
            return self.stored[name]
        proto = self._proto(name)
        if proto is None:
            return None
        numel = math.prod(proto.dims)
        dense = storage_bytes(proto.data_type, numel) or 0
        entry = StoredTensor(name, proto.data_type, numel, dense)
        size = itemsize(proto.data_type)
        if numel >= 16 and size is not None and size >= 1 and proto.data_type not in INDEX_TYPES \
                and proto.data_location != onnx.TensorProto.EXTERNAL:
            try:
                values = numpy_helper.to_array(proto)
            except Exception:  # exotic encodings: leave sparsity unknown
                values = None
            if values is not None:
                nnz = int(np.count_nonzero(values))
                zero_fraction = 1.0 - nnz / numel
                entry.zero_fraction = zero_fraction
                if zero_fraction >= SPARSE_MIN_ZERO_FRACTION:
                    entry.sparse_bytes = int(nnz * size + min(math.ceil(numel / 8), 2 * nnz))
        self.stored[name] = entry
        return entry

    def layer_weights(self, node_idx: int, const_inputs: list[str], buffers: frozenset = frozenset()) -> LayerWeights:
        """Params, newly used stored tensors and stored precision of one layer's constant inputs.

        `buffers` are constant inputs that are stored but are not parameters
        (BatchNormalization running mean and variance, as torch counts them).
        """
        out = LayerWeights()
        best_numel = -1
        for name in const_inputs:
            t = self.info.info(name)
            if t is None or t.elem_type in INDEX_TYPES or t.numel == 1:
                continue  # shape / index arguments and scalars (Clip bounds, ...) are not weights
            roots, decode_ops = self.info.const_roots(name)
            if name not in self._seen_delivered:
                self._seen_delivered.add(name)
                if t.numel is not None and name not in buffers:
                    out.params_count += t.numel
            main_root, main_numel = None, -1
            for root in sorted(roots):
                st = self.stored_tensor(root)
                if st is None or st.elem_type in INDEX_TYPES:
                    continue  # shape arguments of the decode (Reshape targets) are not weight storage
                if root not in self.owner:
                    self.owner[root] = node_idx
                    out.roots.append(root)
                if st.numel > main_numel:
                    main_root, main_numel = st, st.numel
            if main_root is None:
                continue
            precision = precision_of(main_root.elem_type)
            if precision == "int8" and decode_ops & _UNPACK_OPS:
                precision = "int4"
            if main_numel > best_numel and precision is not None:
                best_numel, out.precision, out.decode_ops = main_numel, precision, set(decode_ops)
        return out

    def totals(self, sparse_ok: bool) -> dict:
        used = [self.stored[n] for n in self.owner if n in self.stored]
        by_dtype: dict[str, int] = {}
        for st in used:
            key = dtype_name(st.elem_type)
            by_dtype[key] = by_dtype.get(key, 0) + st.dense_bytes
        dense = sum(st.dense_bytes for st in used)
        sparse = sum(st.bytes_on(True) for st in used)
        return {
            "weight_bytes": sum(st.bytes_on(sparse_ok) for st in used),
            "weight_bytes_dense": dense,
            "weight_bytes_sparse": sparse,
            "weight_bytes_by_dtype": dict(sorted(by_dtype.items())),
            "sparse_tensors": sum(1 for st in used if st.sparse_bytes is not None),
        }


def narrower(a: str | None, b: str | None) -> bool:
    """True when precision a is strictly narrower than b (int4 < int8 < fp16 < fp32)."""
    if a is None or b is None:
        return False
    return _PRECISION_RANK.get(a, 3) < _PRECISION_RANK.get(b, 3)


def wider(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _PRECISION_RANK.get(a, 3) >= _PRECISION_RANK.get(b, 3) else b
