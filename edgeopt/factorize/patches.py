"""The input patches a convolution sees: im2col at sampled output positions."""

from __future__ import annotations

import numpy as np

from edgeopt.factorize.geometry import ConvGeometry


def sample_patches(x: np.ndarray, geometry: ConvGeometry, count: int, rng: np.random.Generator,
                   return_samples: bool = False):
    """Up to `count` patches [S, C, KH, KW] of input x [N, C, H, W], at distinct random output positions.

    With return_samples, also the index in x of the sample each patch comes from.

    Patch s is exactly what the conv multiplies with its weights to produce
    one output pixel (padding included), so `einsum("sckl,ockl->so", P, W)`
    is the conv output (without bias) at those positions.
    """
    n, _, height, width = x.shape
    top, left, bottom, right = geometry.resolved_pads(height, width)
    out_h, out_w = geometry.output_size(height, width)
    total = n * out_h * out_w
    if total <= 0 or count <= 0:
        empty = np.zeros((0, x.shape[1], *geometry.kernel), dtype=x.dtype)
        return (empty, np.zeros(0, dtype=np.int64)) if return_samples else empty
    picks = np.sort(rng.choice(total, size=min(count, total), replace=False))
    sample, rest = np.divmod(picks, out_h * out_w)
    row, col = np.divmod(rest, out_w)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilations
    rows = row[:, None] * sh + np.arange(kh)[None, :] * dh  # [S, KH]
    cols = col[:, None] * sw + np.arange(kw)[None, :] * dw  # [S, KW]
    channels = np.arange(x.shape[1])
    out = padded[sample[:, None, None, None], channels[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return (out, sample) if return_samples else out
