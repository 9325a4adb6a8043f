"""Samples of model inputs: each array is sliced along its own batch axis; inputs without one pass whole.

Every feed dict in edgeopt holds one array per graph input. The samples are
counted on the first array with an axis (its axis 0). Most inputs are batch
first, but real exports also carry recurrent state batch-second (silero VAD's
`state` is [2, batch, 128]), scalars (an If condition, a sample rate) and
fixed-size tensors that every sample shares (an LSTM's [1, 1, 128] initial
state). An array's batch axis is axis 0 when its length is the sample count,
else its first axis of that size; an array with no such axis is shared and
passes whole into every slice.
"""

from __future__ import annotations

import numpy as np


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """Samples in feeds: the length of the first array with an axis (1 when every input is a scalar)."""
    return next((len(v) for v in feeds.values() if np.ndim(v) >= 1), 1)


def batch_axis(array: np.ndarray, samples: int) -> int | None:
    """The axis an array holds its samples on, or None when it is shared by every sample."""
    shape = np.shape(array)
    if not shape:
        return None
    if shape[0] == samples:
        return 0
    return next((axis for axis, size in enumerate(shape) if size == samples), None)


def _slice(feeds: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    n = sample_count(feeds)
    out = {}
    for k, v in feeds.items():
        axis = batch_axis(v, n)
        out[k] = v if axis is None else np.take(v, index, axis=axis) if not isinstance(index, slice) \
            else v[(slice(None),) * axis + (index,)]
    return out


def take(feeds: dict[str, np.ndarray], start: int, stop: int | None = None) -> dict[str, np.ndarray]:
    """Samples start..stop (stop None: start is a count from 0)."""
    return _slice(feeds, slice(0, start) if stop is None else slice(start, stop))


def take_index(feeds: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The samples at the given indices."""
    return _slice(feeds, np.asarray(index))


def concat_samples(parts: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Join one output's per-chunk arrays along their batch axis (chunk i holds sizes[i] samples)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    axis = batch_axis(first, sizes[0]) if np.ndim(first) else None
    if axis is None:  # an output without samples (a shared state): stack the chunks' copies
        return np.stack(parts)
    return np.concatenate(parts, axis=axis)
