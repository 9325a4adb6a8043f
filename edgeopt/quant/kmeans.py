"""1-D k-means (Lloyd) for weight sharing: deterministic, exact assignment by sorted boundaries.

In one dimension the nearest centroid of x is found by binary search among
the midpoints of the sorted centroids, so each iteration is O(n log k).
Two initialisations are tried and the one with the lower squared error kept:
linear over [min, max] (Deep Compression's choice: it keeps the rare large
weights that matter most) and quantiles (density-following).
"""

from __future__ import annotations

import numpy as np


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, x)


def _pin(centroids: np.ndarray) -> np.ndarray:
    """Move the centroid nearest 0 onto 0 exactly (zero weights stay zero; no systematic offset)."""
    centroids = centroids.copy()
    centroids[np.argmin(np.abs(centroids))] = 0.0
    return np.sort(centroids)


def _lloyd(x: np.ndarray, centroids: np.ndarray, iters: int, pin_zero: bool = False
           ) -> tuple[np.ndarray, np.ndarray, float]:
    k = centroids.size
    if pin_zero:
        centroids = _pin(centroids)
    for _ in range(iters):
        labels = _assign(x, centroids)
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=x, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new = _pin(new) if pin_zero else np.sort(new)
        if np.allclose(new, centroids, rtol=0, atol=1e-12):
            centroids = new
            break
        centroids = new
    labels = _assign(x, centroids)
    sse = float(np.sum((x - centroids[labels]) ** 2))
    return centroids, labels, sse


FIT_SAMPLES = 1 << 16  # centroids are fitted on at most this many values (an even quantile sketch)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 60, pin_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cluster values into at most k centroids.

    Large tensors are fitted on an evenly spaced sample of their sorted values
    (a quantile sketch: deterministic, and it keeps the extremes), then every
    value is assigned to its nearest centroid. pin_zero keeps one centroid at exactly 0.

    Returns (centroids float32 [k], indices int32 in values' shape) with
    values ~= centroids[indices]. Unused centroids (fewer distinct values
    than k) repeat the last one, so the codebook always has k entries.
    """
    values = np.asarray(values, dtype=np.float64)
    x = values.reshape(-1)
    distinct = np.unique(x)
    if distinct.size <= k:
        centroids = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1] if distinct.size else 0.0)])
        labels = np.searchsorted(distinct, x) if distinct.size else np.zeros(0, np.int64)
        return centroids.astype(np.float32), labels.reshape(values.shape).astype(np.int32)
    fit = x
    if x.size > FIT_SAMPLES:
        ordered = np.sort(x)
        fit = ordered[np.linspace(0, x.size - 1, FIT_SAMPLES).round().astype(np.int64)]
    lo, hi = float(fit.min()), float(fit.max())
    starts = [np.linspace(lo, hi, k), np.quantile(fit, (np.arange(k) + 0.5) / k)]
    best = None
    for init in starts:
        result = _lloyd(fit, np.sort(init), iters, pin_zero)
        if best is None or result[2] < best[2]:
            best = result
    centroids = best[0]
    labels = _assign(x, centroids)
    return centroids.astype(np.float32), labels.reshape(values.shape).astype(np.int32)


def _assign_unsorted(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    order = np.argsort(centroids, kind="stable")
    return order[_assign(x, centroids[order])]


def _refine_scaled(w: np.ndarray, c: np.ndarray, s: np.ndarray, rounds: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Alternate exact minimisations of sum (w - s[:, None] * c[idx])^2 over idx, then s, then c.

    No step can raise the error, so the result is never worse than the start. c[zero] stays 0.
    Each round reads w twice (assignment, then one bincount of per-row, per-centroid counts and
    sums); the scale and centroid steps and the error work on those [rows, k] tables.
    """
    rows, k = w.shape[0], c.size
    zero = int(np.argmin(np.abs(c)))
    keys_base = (np.arange(rows) * k)[:, None]
    flat_w = w.ravel()
    total_sq = float(np.dot(flat_w, flat_w))
    w32 = w.astype(np.float32)  # the assignment (most of a round) in float32: twice as fast

    def tables(c, s):
        idx = _assign_unsorted(w32 / s[:, None].astype(np.float32), c.astype(np.float32))
        key = (idx + keys_base).ravel()
        counts = np.bincount(key, minlength=rows * k).reshape(rows, k).astype(np.float64)
        sums = np.bincount(key, weights=flat_w, minlength=rows * k).reshape(rows, k)
        return idx, counts, sums

    def error(c, s, counts, sums):  # sum w^2 - 2 sum s (u . w) + sum s^2 (u . u), u = c[idx]
        return total_sq - 2.0 * float(np.dot(s, sums @ c)) + float(np.dot(s * s, counts @ (c * c)))

    c, s = c.astype(np.float64), s.astype(np.float64)
    idx, counts, sums = tables(c, s)
    err = error(c, s, counts, sums)
    for _ in range(rounds):
        uu, uw = counts @ (c * c), sums @ c
        s_new = np.where(uu > 0, uw / np.where(uu > 0, uu, 1.0), s)
        s_new = np.where(s_new > 0, s_new, 1.0)  # a row the codebook cannot fit keeps a usable scale
        num, den = s_new @ sums, (s_new * s_new) @ counts
        c_new = np.where(den > 0, num / np.where(den > 0, den, 1.0), c)
        c_new[zero] = 0.0
        idx_new, counts_new, sums_new = tables(c_new, s_new)
        new = error(c_new, s_new, counts_new, sums_new)
        if new > err:  # only the scale guard above can do this: keep the last good state
            break
        converged = new > err * (1 - 1e-6)
        c, s, idx, counts, sums, err = c_new, s_new, idx_new, counts_new, sums_new, new
        if converged:
            break
    return c, s, idx, max(err, 0.0)


REFINE_VALUES = 1 << 18  # larger tensors are refined on a column sample of about this many values...
FINISH_ROUNDS = 3  # ...then finished with a few rounds on every value


def scaled_codebook(w: np.ndarray, bits: int, iters: int = 60, rounds: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shared codebook c [2^bits] and a scale per row s [C] with w[o, j] ~= s[o] * c[idx[o, j]].

    w is [C, n] (rows = output channels). Two starts, each refined by alternating exact
    minimisations (indices, scales, centroids) and the one with the lower error kept:
      - k-means of the rows divided by their max |w|, with a centroid pinned at 0;
      - uniform levels -2^(bits-1) .. 2^(bits-1)-1 with each row's MSE-clipped symmetric scale,
        which is exactly uniform int quantization at the same bits.
    Since refining never raises the error, the codebook is never worse than uniform levels.
    Tensors over REFINE_VALUES values are refined on evenly spaced columns, then finished on all
    values; the uniform start, scored on all values, remains a candidate.
    Returns (codebook float32 [k], scales float32 [C], indices int32 [C, n]).
    """
    from edgeopt.quant.qparams import compute_qparams  # imported here: qparams does not depend on kmeans

    w = np.asarray(w, dtype=np.float64)
    k = 1 << bits
    absmax = np.max(np.abs(w), axis=1)
    absmax = np.where(absmax > 0, absmax, 1.0)
    starts = []
    c0, _ = kmeans_1d(w / absmax[:, None], k, iters, pin_zero=True)
    starts.append((c0.astype(np.float64), absmax))
    if bits >= 2:
        qp = compute_qparams(w.astype(np.float32), bits, True, axis=0, clip="mse")
        grid = np.arange(-(k // 2), k // 2, dtype=np.float64)
        starts.append((grid, np.asarray(qp.scale, np.float64)))
    fit = w
    if w.size > REFINE_VALUES and w.shape[1] > 64:  # refine on evenly spaced columns, finish on all
        cols = np.unique(np.linspace(0, w.shape[1] - 1, max(64, REFINE_VALUES // w.shape[0])).round().astype(int))
        fit = w[:, cols]
    best = None
    for c, s in starts:
        result = _refine_scaled(fit, c, s, rounds)
        if best is None or result[3] < best[3]:
            best = result
    if fit is not w:
        finals = [_refine_scaled(w, best[0], best[1], FINISH_ROUNDS)]
        if bits >= 2:  # uniform levels on every value stay a candidate: never worse than them
            finals.append(_refine_scaled(w, *starts[-1], 0))
        best = min(finals, key=lambda r: r[3])
    c, s, idx, _ = best
    return c.astype(np.float32), s.astype(np.float32), idx.astype(np.int32)
