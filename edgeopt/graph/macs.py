"""Multiply-accumulates of the MAC layers, from their shapes: the one rule the profiler and the
passes that report MACs saved (pruning) both use, so their figures cannot drift apart.

- Conv: N x Cout x prod(out spatial) x (Cin / group) x prod(kernel) = numel(Y) x W[1] x prod(W[2:])
- ConvTranspose: N x Cin x prod(in spatial) x (Cout / group) x prod(kernel) = numel(X) x W[1] x prod(W[2:])
- Gemm: M x N x K (K from A, transA respected); MatMul (batched, broadcast): numel(Y) x K
"""

from __future__ import annotations

import math


def layer_macs(kind: str, x: list[int], w: list[int] | None, y: list[int], trans_a: bool = False) -> int:
    """MACs of one layer of `kind` ("Conv", "ConvTranspose", "Gemm" or "MatMul") with input shape x,
    weight shape w (Conv kinds only) and output shape y."""
    if kind == "Conv":
        return math.prod(y) * w[1] * math.prod(w[2:])
    if kind == "ConvTranspose":
        return math.prod(x) * w[1] * math.prod(w[2:])
    if kind == "Gemm":
        return math.prod(y) * (x[0] if trans_a else x[-1])
    if kind == "MatMul":
        return math.prod(y) * x[-1]
    raise ValueError(f"not a MAC layer kind: {kind}")
