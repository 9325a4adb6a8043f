"""Low-rank building blocks: whitening by input statistics and least-squares refits.

Weighting a factorization by the layer's inputs: the output error of an
approximate weight matrix W' on inputs x is ||(W - W') x||, whose mean square
is tr((W - W') S (W - W')^T) with S = E[x x^T]. With S = L L^T (Cholesky),
that is ||(W - W') L||_F^2, so the best rank-r W' is the truncated SVD of
W L, multiplied back by L^-1 (Eckart-Young on the whitened matrix).
"""

from __future__ import annotations

import numpy as np

RIDGE = 1e-6  # relative regularization of second-moment matrices (dead inputs stay invertible)


def second_moment(x: np.ndarray) -> np.ndarray:
    """E[x x^T] over the first axis of x [S, ..., D] -> [..., D, D] (uncentred: the mean matters too)."""
    moved = np.moveaxis(x, 0, -1)  # [..., D, S]
    return (moved @ np.swapaxes(moved, -1, -2)) / max(x.shape[0], 1)


def whitening_factor(moment: np.ndarray, samples: int) -> np.ndarray:
    """Lower-triangular L with L L^T = the moment shrunk towards a multiple of the identity.

    Estimated from `samples` vectors of dimension D, a second moment is
    trustworthy when samples >> D; with few samples the whitened fit would
    match the calibration data and nothing else. Shrinking by D / (D +
    samples) (Ledoit-Wolf style) makes it fall back smoothly to the
    weights-only fit (identity weighting) when the data is too thin, and
    the small ridge keeps dead inputs invertible. Stacks of matrices allowed.
    """
    dim = moment.shape[-1]
    shrink = dim / (dim + max(samples, 1))
    scale = np.maximum(np.trace(moment, axis1=-2, axis2=-1) / dim, 1e-12)
    eye = np.eye(dim)
    target = (shrink + RIDGE) * scale[..., None, None] * eye
    return np.linalg.cholesky((1.0 - shrink) * moment + target + 1e-12 * eye)


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


class LowRank:
    """Best low-rank approximations of a matrix (or a stack of them), all ranks from one decomposition.

    Uses the eigendecomposition of the Gram matrix on the smaller side
    (M M^T or M^T M), which is several times faster than a full SVD and gives
    the same truncations: projecting M on its top-r singular subspace is the
    rank-r SVD truncation, and at full rank the projection is exact.
    """

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        rows, cols = self.matrix.shape[-2:]
        self.left = rows <= cols  # the vectors span the column space (left singular vectors)
        gram = self.matrix @ _t(self.matrix) if self.left else _t(self.matrix) @ self.matrix
        lam, vectors = np.linalg.eigh(gram)
        self.singular_values = np.sqrt(np.clip(lam[..., ::-1], 0.0, None))  # descending
        self.vectors = vectors[..., :, ::-1]

    @property
    def full_rank(self) -> int:
        return min(self.matrix.shape[-2:])

    def relative_errors(self) -> np.ndarray:
        """||M - M_r||_F / ||M||_F for r = 0 .. full (summed over a stack)."""
        tail = tail_energy(self.singular_values)
        tail = tail.reshape(-1, tail.shape[-1]).sum(axis=0)
        return np.sqrt(tail / tail[0]) if tail[0] > 0 else np.zeros_like(tail)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(a [..., R, r], b [..., r, C]) with a b the best rank-r approximation, scaled evenly."""
        v = self.vectors[..., :, :rank]
        root = np.sqrt(self.singular_values[..., :rank])
        scale = np.where(root > 1e-8 * np.max(root, axis=-1, keepdims=True), root, 1.0)
        if self.left:
            return v * scale[..., None, :], (_t(v) @ self.matrix) / scale[..., :, None]
        return (self.matrix @ v) / scale[..., None, :], _t(v) * scale[..., :, None]


def tail_energy(s: np.ndarray) -> np.ndarray:
    """tail[r] = sum of s_i^2 for i >= r, for r = 0..len(s) (last axis; stacks allowed)."""
    sq = s ** 2
    rev = np.cumsum(sq[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([rev, np.zeros(sq.shape[:-1] + (1,))], axis=-1)


def refit_linear(z: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray,
                 strength: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares W, b for y ~ z W^T + b, pulled towards (w0, b0) where the data says little.

    Minimizes ||z W^T + b - y||^2 + lam ||W - w0||^2 (b unregularized), with
    lam relative to the mean energy of z. Directions z never excites (a
    channel that is dead on the calibration data) keep their starting
    weights rather than collapsing to zero, so other data is still served.
    z [S, K], y [S, O], w0 [O, K], b0 [O].
    """
    s, k = z.shape
    z1 = np.concatenate([z, np.ones((s, 1))], axis=1)
    gram = z1.T @ z1
    lam = strength * max(float(np.trace(gram[:k, :k])) / max(k, 1), 1e-12)
    reg = np.full(k + 1, lam)
    reg[k] = 1e-9 * s
    theta0 = np.concatenate([w0.T, b0[None, :]], axis=0)
    rhs = z1.T @ y + reg[:, None] * theta0
    theta = np.linalg.solve(gram + np.diag(reg), rhs)
    return theta[:k].T, theta[k]


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """||approx - exact|| / ||exact|| (0 when both are 0)."""
    norm = float(np.linalg.norm(exact))
    diff = float(np.linalg.norm(approx - exact))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm
