"""Scales and zero points for uniform quantization, per tensor, per channel or per block.

The layout of `scale` / `zero_point` is exactly what ONNX DequantizeLinear takes:

- per tensor: scalars;
- per channel (`axis`): 1-D of length w.shape[axis];
- block-wise (`axis` + `block_size`): same rank as w, with w.shape[axis]
  replaced by ceil(w.shape[axis] / block_size) (the last block may be short).

Symmetric: signed integers, zero point 0, scale = max|w| / (2^(bits-1) - 1)
(the restricted range [-7, 7] / [-127, 127], so +-max|w| are both exact).
Asymmetric: unsigned integers, the range [min(w, 0), max(w, 0)] mapped onto
[0, 2^bits - 1] with an integer zero point (so 0.0 is exact: padding and ReLU
zeros stay zeros).
Rounding is half to even, like QuantizeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Clipping ratios tried by clip="mse": the range is shrunk to r * the observed range.
MSE_RATIOS = np.linspace(1.0, 0.5, 26)


@dataclass
class QParams:
    scale: np.ndarray  # float32 (or float16 when asked), DequantizeLinear layout
    zero_point: np.ndarray  # int8/uint8 values held as int32; same layout as scale
    bits: int
    signed: bool
    axis: int | None = None
    block_size: int | None = None


def float16_holds(values: np.ndarray, per_value: bool = True) -> bool:
    """Whether float16 storage keeps values to within 2^-10 relative: of each value (scales, which multiply
    whole channels) or of the largest one (per_value=False: codebooks, where only absolute error counts)."""
    v = np.asarray(values, dtype=np.float32)
    if v.size == 0:
        return True
    half = v.astype(np.float16).astype(np.float32)
    if not np.all(np.isfinite(half)):
        return False
    ref = np.abs(v) if per_value else np.max(np.abs(v))
    return bool(np.all(np.abs(half - v) <= ref * 2.0 ** -10))


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range of the storage type: int4 [-8, 7], uint4 [0, 15], int8 [-128, 127], uint8 [0, 255]."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _reduce(w: np.ndarray, fn, axis: int | None, block_size: int | None) -> np.ndarray:
    """Apply a reduction (np.min / np.max) over each quantization group of w, in DQL layout."""
    if axis is None:
        return np.asarray(fn(w))
    axis = axis % w.ndim
    if block_size is None:
        others = tuple(i for i in range(w.ndim) if i != axis)
        return fn(w, axis=others) if others else w.copy()
    moved = np.moveaxis(w, axis, -1)
    n = moved.shape[-1]
    nb = -(-n // block_size)
    pad = nb * block_size - n
    if pad:
        if fn is np.sum:  # zeros add nothing to a sum
            edge = np.zeros(moved.shape[:-1] + (pad,), moved.dtype)
        else:  # the block's own first value changes neither its min nor its max
            edge = np.repeat(moved[..., (nb - 1) * block_size:(nb - 1) * block_size + 1], pad, axis=-1)
        moved = np.concatenate([moved, edge], axis=-1)
    out = fn(moved.reshape(moved.shape[:-1] + (nb, block_size)), axis=-1)
    return np.moveaxis(out, -1, axis)


def expand(p: np.ndarray, shape: tuple[int, ...], axis: int | None, block_size: int | None) -> np.ndarray:
    """Broadcast a DQL-layout parameter to the full tensor shape."""
    p = np.asarray(p)
    if axis is None:
        return np.broadcast_to(p, shape)
    axis = axis % len(shape)
    if block_size is None:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return np.broadcast_to(p.reshape(view), shape)
    return np.repeat(p, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _params_for_range(lo: np.ndarray, hi: np.ndarray, bits: int, signed: bool):
    qmin, qmax = qrange(bits, signed)
    if signed:
        absmax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        scale = absmax / qmax
        zp = np.zeros_like(scale, dtype=np.int32)
    else:
        lo = np.minimum(lo, 0.0).astype(np.float64)
        hi = np.maximum(hi, 0.0).astype(np.float64)
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qmin - lo / safe), qmin, qmax).astype(np.int32)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero group: any scale decodes it exactly
    return scale, zp


def quantize(w: np.ndarray, qp: QParams) -> np.ndarray:
    """Integers (int32 array) in the storage range; decode with `dequantize`."""
    qmin, qmax = qrange(qp.bits, qp.signed)
    scale = expand(np.asarray(qp.scale, dtype=np.float32), w.shape, qp.axis, qp.block_size)
    zp = expand(qp.zero_point, w.shape, qp.axis, qp.block_size)
    q = w.astype(np.float32)  # one copy, then in place: a 1 GiB weight needs 1 GiB of temporaries, not 7
    np.divide(q, scale, out=q)
    np.round(q, out=q)
    q += zp  # small integers: exact in float32
    np.clip(q, qmin, qmax, out=q)
    return q.astype(np.int32)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """(q - zero_point) * scale as float32, what DequantizeLinear computes."""
    scale = expand(np.asarray(qp.scale, dtype=np.float32), q.shape, qp.axis, qp.block_size)
    zp = expand(qp.zero_point, q.shape, qp.axis, qp.block_size)
    out = q.astype(np.float32)  # in place, as in quantize; integers this small are exact in float32
    out -= zp
    out *= scale
    return out


def _group_error(w: np.ndarray, qp: QParams) -> np.ndarray:
    err = (dequantize(quantize(w, qp), qp) - w) ** 2
    return _reduce(err, np.sum, qp.axis, qp.block_size)


def compute_qparams(w: np.ndarray, bits: int, symmetric: bool = True, axis: int | None = None,
                    block_size: int | None = None, clip: str = "minmax",
                    scale_dtype: type = np.float32) -> QParams:
    """Scale and zero point of w for the given granularity.

    clip="mse" shrinks each group's range by the ratio (of MSE_RATIOS) that
    minimises that group's squared rounding + clipping error.
    scale_dtype=np.float16 rounds the scales to float16 before the zero points
    and the integers are derived from them, so the decode is self-consistent.
    """
    w = np.asarray(w, dtype=np.float32)
    lo = _reduce(w, np.min, axis, block_size)
    hi = _reduce(w, np.max, axis, block_size)

    def make(ratio):
        scale, zp = _params_for_range(lo * ratio, hi * ratio, bits, symmetric)
        scale = scale.astype(scale_dtype)
        if scale_dtype is not np.float32:
            scale = np.where(scale > 0, scale, np.finfo(scale_dtype).tiny).astype(scale_dtype)
        return QParams(scale, zp, bits, symmetric, axis, block_size)

    best = make(1.0)
    if clip == "mse":
        best_err = _group_error(w, best)
        for ratio in MSE_RATIOS[1:]:
            cand = make(ratio)
            err = _group_error(w, cand)
            better = err < best_err
            if np.any(better):
                best = QParams(np.where(better, cand.scale, best.scale).astype(scale_dtype),
                               np.where(better, cand.zero_point, best.zero_point), bits, symmetric, axis,
                               block_size)
                best_err = np.minimum(err, best_err)
    elif clip != "minmax":
        raise ValueError(f"unknown clip mode {clip!r}")
    return best
