"""Per-channel means E[x] of the activations weight layers multiply, from calibration data (for bias
correction, biascorrect.py). Conv / ConvTranspose take channels on axis 1, Gemm / MatMul on the last
axis, so the means are keyed by the activation's name and that layout.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.graph.activations import Stream
from edgeopt.verify.feeds import sample_count, take
from edgeopt.verify.runtime import static_batch

CHANNEL_FIRST = ("Conv", "ConvTranspose")  # other readers (Gemm, MatMul) take channels on the last axis


def activation_input(node: ir.Node) -> ir.Value | None:
    """The activation a weight node multiplies: its first input, unless that is a constant."""
    x = node.inputs[0] if node.inputs else None
    if x is None or not x.name or ir.convenience.get_const_tensor(x) is not None:
        return None
    return x


def means_key(node: ir.Node) -> tuple[str, bool] | None:
    x = activation_input(node)
    return None if x is None else (x.name, node.op_type in CHANNEL_FIRST)


def input_means(model: onnx.ModelProto, nodes: list[ir.Node], feeds: dict[str, np.ndarray],
                max_samples: int = 256) -> dict[tuple[str, bool], np.ndarray]:
    """Mean of each node's activation input per channel, keyed by means_key(node)."""
    keys = sorted({k for k in map(means_key, nodes) if k is not None})
    if not keys:
        return {}
    step = static_batch(model) or 1
    total = sample_count(feeds)
    n = min(max_samples, total)
    n = max(step, n - n % step) if total >= step else total
    feeds = take(feeds, n)
    # running sums per channel, a group of activations and a chunk of samples at a time (bounded memory)
    sums: dict[tuple[str, bool], np.ndarray] = {}
    counts: dict[tuple[str, bool], int] = {}
    names = sorted({name for name, _ in keys})
    for piece in Stream(model, names, feeds, what="bias correction: measuring activation means"):
        for name, channel_first in keys:
            a = piece.values.get(name)
            if a is None or np.ndim(a) < 2:
                continue
            axis = 1 if channel_first else a.ndim - 1
            axes = tuple(i for i in range(a.ndim) if i != axis)
            key = (name, channel_first)
            total = np.sum(a, axis=axes, dtype=np.float64)
            sums[key] = total if key not in sums else sums[key] + total
            counts[key] = counts.get(key, 0) + a.size // a.shape[axis]
    return {key: sums[key] / counts[key] for key in sums}
