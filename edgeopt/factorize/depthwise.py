"""KxK Conv (group 1) -> depthwise KxK conv with depth multiplier m, then a pointwise 1x1 conv.

For input channel c the original weights form a matrix W_c [O, KH*KW]; the
split computes W_c ~ P_c D_c with D_c [m, KH*KW] (the m depthwise kernels of
channel c) and P_c [O, m] (its columns of the pointwise weights). A rank-m
SVD of each W_c is the best such pair for the weights, and it is exact when
m >= min(O, KH*KW). With calibration patches, the SVD is taken of W_c L_c
(L_c L_c^T = E[x_c x_c^T], the channel's patch statistics), which minimizes
that channel's contribution to the output error, and the pointwise weights
and bias are then refitted jointly across channels by least squares on the
real layer outputs. Given `reference` patches too (what the layer saw in the
original model, at the same positions), the target is the original model's
output there: fitting a layer to it from the inputs it gets after the earlier
splits corrects the error those splits left (asymmetric reconstruction,
Zhang et al. 2016).

Depthwise output channel c*m + j is kernel j of input channel c, which is
how ONNX orders the outputs of a Conv with group = C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.factorize.calibration import CalibrationFit
from edgeopt.factorize.lowrank import LowRank, second_moment, whitening_factor


@dataclass
class DepthwiseSplit:
    depthwise: np.ndarray  # [C*m, 1, KH, KW] float32
    pointwise: np.ndarray  # [O, C*m, 1, 1] float32
    bias: np.ndarray | None  # [O] float32, goes on the pointwise conv
    multiplier: int
    error: float  # relative error of the weights, or of the layer output on the patches
    error_on: str  # "weights" or "output"
    refitted: bool = False  # pointwise weights and bias refitted by least squares on the data

    @property
    def size(self) -> int:
        return self.multiplier


def full_multiplier(weight: np.ndarray) -> int:
    """The depth multiplier at which the split is exact: min(O, KH*KW)."""
    o, _, kh, kw = weight.shape
    return min(o, kh * kw)


def _per_channel(weight: np.ndarray) -> np.ndarray:
    o, c, kh, kw = weight.shape
    return weight.astype(np.float64).transpose(1, 0, 2, 3).reshape(c, o, kh * kw)  # [C, O, KK]


class DepthwiseFactorizer:
    """All depth multipliers of one layer from one decomposition per channel.

    weight [O, C, KH, KW]; patches [S, C, KH, KW] (from `sample_patches`)
    make the fit data-weighted and the error that of the layer output;
    reference [S, C, KH, KW] (same positions, original model) sets the target;
    images [S] (the calibration input of each patch) decides what is held out.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, patches: np.ndarray | None = None,
                 reference: np.ndarray | None = None, images: np.ndarray | None = None):
        self.shape = weight.shape
        self.bias = bias
        self.per_channel = _per_channel(weight)
        self.plain = LowRank(self.per_channel)
        self.full = full_multiplier(weight)
        self.calibration = self.whitened = self.chol = None
        self.inherited_error = 0.0
        if patches is not None:
            o, c, kh, kw = self.shape
            self.calibration = CalibrationFit(weight, bias, patches, reference, images)
            self.inherited_error = self.calibration.inherited_error
            xc = self.calibration.fit_patches.reshape(-1, c, kh * kw)
            self.chol = whitening_factor(second_moment(xc), len(xc))  # [C, KK, KK]
            self.whitened = LowRank(self.per_channel @ self.chol)

    def weight_errors(self) -> np.ndarray:
        """Relative weight error for m = 0 .. full (weights-only fits)."""
        return self.plain.relative_errors()

    def split(self, multiplier: int) -> DepthwiseSplit:
        o, c, kh, kw = self.shape
        m = max(1, min(int(multiplier), self.full))
        exact = m >= self.full
        if self.whitened is None or exact:
            left, right = self.plain.factors(m)  # [C, O, m], [C, m, KK]
        else:
            left, right_w = self.whitened.factors(m)
            # right @ chol = right_w  ->  right = right_w chol^-1
            right = np.linalg.solve(self.chol.transpose(0, 2, 1), right_w.transpose(0, 2, 1)).transpose(0, 2, 1)
        pointwise = left.transpose(1, 0, 2).reshape(o, c * m)
        bias = None if self.bias is None else self.bias.astype(np.float64)
        refitted = False
        if self.calibration is None:
            error, error_on = float(self.weight_errors()[m]), "weights"
        else:
            def depthwise_outputs(patches: np.ndarray) -> np.ndarray:
                return np.einsum("sck,cjk->scj", patches.reshape(len(patches), c, kh * kw), right).reshape(
                    len(patches), c * m)

            pointwise, bias, error, refitted = self.calibration.finish(depthwise_outputs, pointwise,
                                                                       allow_refit=not exact)
            if not refitted and self.bias is None:
                bias = None
            error_on = "output"
        return DepthwiseSplit(
            depthwise=right.reshape(c * m, 1, kh, kw).astype(np.float32),
            pointwise=pointwise.reshape(o, c * m, 1, 1).astype(np.float32),
            bias=None if bias is None else bias.astype(np.float32),
            multiplier=m, error=error, error_on=error_on, refitted=refitted)


def depthwise_weight_errors(weight: np.ndarray) -> np.ndarray:
    """Relative weight error ||W - W_m|| / ||W|| for m = 0 .. min(O, KH*KW)."""
    return LowRank(_per_channel(weight)).relative_errors()


def split_depthwise(weight: np.ndarray, bias: np.ndarray | None, multiplier: int,
                    patches: np.ndarray | None = None) -> DepthwiseSplit:
    """The depthwise + pointwise pair with depth multiplier min(multiplier, full) approximating weight."""
    return DepthwiseFactorizer(weight, bias, patches).split(multiplier)


def depthwise_macs(out_channels: int, in_channels: int, kernel: tuple[int, int], multiplier: int,
                   out_pixels: int) -> int:
    """MACs of the split pair: depthwise C*m*KH*KW plus pointwise O*C*m, per output pixel."""
    kk = kernel[0] * kernel[1]
    return (in_channels * multiplier * kk + out_channels * in_channels * multiplier) * out_pixels
