"""KxK Conv -> a Kx1 conv to r channels, then a 1xK conv (spatial SVD, Jaderberg et al. 2014).

Arrange the weights as M [(c, kh), (o, kw)] = W[o, c, kh, kw]. A rank-r
factorization M ~ A B gives the vertical conv V[j, c, kh, 0] = A[(c, kh), j]
and the horizontal conv H[o, j, 0, kw] = B[j, (o, kw)]; the pair is exact
when r >= min(C*KH, O*KW). The vertical conv takes the vertical stride,
padding and dilation, the horizontal conv the horizontal ones (zero padding
splits by direction because the vertical conv has no bias).

With calibration patches the SVD is taken of L^T M, L L^T being the second
moment of the vertical input columns x[(c, kh)] (pooled over kw), and the
horizontal weights and bias are refitted by least squares on the layer's
real outputs (the original model's, given `reference` patches: see
factorize.depthwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.factorize.calibration import CalibrationFit
from edgeopt.factorize.lowrank import LowRank, second_moment, whitening_factor


@dataclass
class SpatialSplit:
    vertical: np.ndarray  # [r, C, KH, 1] float32
    horizontal: np.ndarray  # [O, r, 1, KW] float32
    bias: np.ndarray | None  # [O] float32, goes on the horizontal conv
    rank: int
    error: float
    error_on: str  # "weights" or "output"
    refitted: bool = False  # horizontal weights and bias refitted by least squares on the data

    @property
    def size(self) -> int:
        return self.rank


def full_rank(weight: np.ndarray) -> int:
    """The rank at which the split is exact: min(C*KH, O*KW)."""
    o, c, kh, kw = weight.shape
    return min(c * kh, o * kw)


def _matrix(weight: np.ndarray) -> np.ndarray:
    o, c, kh, kw = weight.shape
    return weight.astype(np.float64).transpose(1, 2, 0, 3).reshape(c * kh, o * kw)


class SpatialFactorizer:
    """All ranks of one layer from one decomposition (weights-only, or whitened by the patches)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, patches: np.ndarray | None = None,
                 reference: np.ndarray | None = None, images: np.ndarray | None = None):
        self.shape = weight.shape
        self.bias = bias
        self.matrix = _matrix(weight)
        self.full = full_rank(weight)
        self._plain: LowRank | None = None
        self.calibration = self.whitened = None
        self.inherited_error = 0.0
        if patches is not None:
            o, c, kh, kw = self.shape
            self.calibration = CalibrationFit(weight, bias, patches, reference, images)
            self.inherited_error = self.calibration.inherited_error
            columns = _columns(self.calibration.fit_patches).reshape(-1, c * kh)  # one row per (patch, kw)
            self.chol = whitening_factor(second_moment(columns), len(columns))
            self.whitened = LowRank(self.chol.T @ self.matrix)

    @property
    def plain(self) -> LowRank:
        if self._plain is None:
            self._plain = LowRank(self.matrix)
        return self._plain

    def weight_errors(self) -> np.ndarray:
        """Relative weight error for r = 0 .. full (weights-only fits)."""
        return self.plain.relative_errors()

    def split(self, rank: int) -> SpatialSplit:
        o, c, kh, kw = self.shape
        r = max(1, min(int(rank), self.full))
        exact = r >= self.full
        if self.whitened is None or exact:
            left, right = self.plain.factors(r)  # [C*KH, r], [r, O*KW]
        else:
            left_w, right = self.whitened.factors(r)
            left = np.linalg.solve(self.chol.T, left_w)
        horizontal = right.reshape(r, o, kw).transpose(1, 0, 2).reshape(o, r * kw)
        bias = None if self.bias is None else self.bias.astype(np.float64)
        refitted = False
        if self.calibration is None:
            error, error_on = float(self.weight_errors()[r]), "weights"
        else:
            def vertical_outputs(patches: np.ndarray) -> np.ndarray:  # [n, r*KW] in (j, kw) order
                return (_columns(patches) @ left).transpose(0, 2, 1).reshape(len(patches), r * kw)

            horizontal, bias, error, refitted = self.calibration.finish(vertical_outputs, horizontal,
                                                                        allow_refit=not exact)
            if not refitted and self.bias is None:
                bias = None
            error_on = "output"
        return SpatialSplit(
            vertical=left.T.reshape(r, c, kh, 1).astype(np.float32),
            horizontal=horizontal.reshape(o, r, 1, kw).astype(np.float32),
            bias=None if bias is None else bias.astype(np.float32),
            rank=r, error=error, error_on=error_on, refitted=refitted)


def _columns(patches: np.ndarray) -> np.ndarray:
    """Patches [n, C, KH, KW] as the vertical conv's inputs [n, KW, C*KH]."""
    n, c, kh, kw = patches.shape
    return patches.transpose(0, 3, 1, 2).reshape(n, kw, c * kh)


def spatial_weight_errors(weight: np.ndarray) -> np.ndarray:
    """Relative weight error ||W - W_r|| / ||W|| for r = 0 .. min(C*KH, O*KW)."""
    return LowRank(_matrix(weight)).relative_errors()


def split_spatial(weight: np.ndarray, bias: np.ndarray | None, rank: int,
                  patches: np.ndarray | None = None) -> SpatialSplit:
    """The vertical + horizontal pair of rank min(rank, full) approximating weight [O, C, KH, KW]."""
    return SpatialFactorizer(weight, bias, patches).split(rank)


def spatial_macs(out_channels: int, in_channels: int, kernel: tuple[int, int], rank: int,
                 out_size: tuple[int, int], in_width: int) -> int:
    """MACs of the pair: the vertical conv runs at out_h x in_width, the horizontal at out_h x out_w."""
    (kh, kw), (out_h, out_w) = kernel, out_size
    return rank * in_channels * kh * out_h * in_width + out_channels * rank * kw * out_h * out_w
