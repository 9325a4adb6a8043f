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
