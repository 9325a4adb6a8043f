"""Samples of model inputs: each array is sliced along its own batch axis; inputs without one pass whole.

Every feed dict in edgeopt holds one array per graph input. The samples are
counted on the first array with an axis. Most inputs are batch first, but real
exports also carry recurrent state batch-second (silero VAD's `state` is
[2, batch, 128]), scalars (an If condition, a sample rate) and fixed-size
tensors that every sample shares (an LSTM's [1, 1, 128] initial state).

Where the model says which axis holds the samples (edgeopt.graph.shapes.batch_axes:
its free axis 0, or the axis named like the batch), `Feeds` remembers it. Otherwise an array's
batch axis is axis 0 when its length is the sample count, else its first axis
of that size; an array with no such axis is shared and passes whole.
"""

from __future__ import annotations

import numpy as np


class Feeds(dict):
    """A feed dict that knows each input's batch axis (None: shared by every sample)."""

    def __init__(self, arrays: dict, axes: dict[str, int | None] | None = None):
        super().__init__(arrays)
        self.axes = dict(axes or {})


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """Samples in feeds: the batch length of the first array with an axis (1 when all are scalars); an
    array that Feeds marks as shared (axis None) does not count."""
    axes = getattr(feeds, "axes", {})
    for name, v in feeds.items():
        if np.ndim(v) >= 1:
            if name in axes and axes[name] is None:
                continue
            return np.shape(v)[axes.get(name, 0)] if axes.get(name) is not None else len(v)
    return 1


def batch_axis(array: np.ndarray, samples: int) -> int | None:
    """The size rule: axis 0 when it holds `samples`, else the first axis that does, else None."""
    shape = np.shape(array)
    if not shape:
        return None
    if shape[0] == samples:
        return 0
    return next((axis for axis, size in enumerate(shape) if size == samples), None)


def _axis(feeds, name: str, array, samples: int) -> int | None:
    axes = getattr(feeds, "axes", {})
    return axes[name] if name in axes else batch_axis(array, samples)


def _slice(feeds: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    n = sample_count(feeds)
    out = {}
    for k, v in feeds.items():
        axis = _axis(feeds, k, v, n)
        if axis is None:
            out[k] = v
        elif isinstance(index, slice):
            out[k] = v[(slice(None),) * axis + (index,)]
        else:
            out[k] = np.take(v, index, axis=axis)
    return Feeds(out, getattr(feeds, "axes", None))


def take(feeds: dict[str, np.ndarray], start: int, stop: int | None = None) -> dict[str, np.ndarray]:
    """Samples start..stop (stop None: start is a count from 0)."""
    return _slice(feeds, slice(0, start) if stop is None else slice(start, stop))


def take_index(feeds: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The samples at the given indices."""
    return _slice(feeds, np.asarray(index))


def concat_samples(parts: list[np.ndarray], sizes: list[int], axis: int | None = None) -> np.ndarray:
    """Join one output's per-chunk arrays (chunk i holds sizes[i] samples) along its batch axis:
    the given one, else the first axis whose size follows the chunk sizes in every part."""
    if len(parts) == 1:
        return parts[0]
    if axis is None:
        ndim = np.ndim(parts[0])
        axis = next((a for a in range(ndim) if all(np.shape(p)[a] == s for p, s in zip(parts, sizes))), None)
    if axis is None:  # an output without samples (a shared state): stack the chunks' copies
        return np.stack(parts)
    return np.concatenate(parts, axis=axis)
