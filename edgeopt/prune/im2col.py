"""Conv input patches at sampled output positions (what reconstruction and ThiNet regress on)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    out_hw: tuple[int, int]


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def conv_geometry(node: ir.Node, in_hw: tuple[int, int], kernel: tuple[int, int]) -> ConvGeometry | None:
    """Padding and output size of a 2-D Conv, or None for what is not 2-D."""
    if len(kernel) != 2:
        return None
    strides = tuple(_attr(node, "strides", [1, 1]))
    dilations = tuple(_attr(node, "dilations", [1, 1]))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        pads = tuple(_attr(node, "pads", [0, 0, 0, 0]))
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        begin, end = [], []
        for size, s, k, d in zip(in_hw, strides, kernel, dilations):
            out = math.ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            b, e = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            begin.append(b)
            end.append(e)
        pads = (begin[0], begin[1], end[0], end[1])
    out_hw = tuple((size + pads[i] + pads[i + 2] - (k - 1) * d - 1) // s + 1
                   for i, (size, s, k, d) in enumerate(zip(in_hw, strides, kernel, dilations)))
    return ConvGeometry(tuple(kernel), strides, dilations, pads, out_hw)


def sample_positions(n: int, out_hw: tuple[int, int], count: int, rng: np.random.Generator):
    """(sample, row, col) of up to `count` distinct output positions."""
    total = n * out_hw[0] * out_hw[1]
    flat = np.arange(total) if total <= count else np.sort(rng.choice(total, size=count, replace=False))
    s, rest = np.divmod(flat, out_hw[0] * out_hw[1])
    r, c = np.divmod(rest, out_hw[1])
    return s, r, c


def patches(x: np.ndarray, geom: ConvGeometry, where) -> np.ndarray:
    """Input patches [m, C, kh*kw] behind the output positions `where` = (sample, row, col)."""
    s, r, c = where
    pt, pl, pb, pr = geom.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = geom.kernel
    out = np.empty((len(s), x.shape[1], kh * kw), dtype=x.dtype)
    for i in range(kh):
        rows = r * geom.strides[0] + i * geom.dilations[0]
        for j in range(kw):
            cols = c * geom.strides[1] + j * geom.dilations[1]
            out[:, :, i * kw + j] = xp[s, :, rows, cols]
    return out
