"""Samples of model inputs: arrays with a batch axis are sliced, 0-d inputs (flags, scalars) pass whole.

Every feed dict in edgeopt holds one array per graph input, batch first. A
graph input that is a scalar (an If condition, a threshold) has no batch axis:
each slice of the samples carries it unchanged.
"""

from __future__ import annotations

import numpy as np


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """Samples in feeds: the length of the first batched array (1 when every input is a scalar)."""
    return next((len(v) for v in feeds.values() if np.ndim(v) >= 1), 1)


def take(feeds: dict[str, np.ndarray], start: int, stop: int | None = None) -> dict[str, np.ndarray]:
    """Samples start..stop (stop None: start is a count from 0)."""
    window = slice(0, start) if stop is None else slice(start, stop)
    return {k: v[window] if np.ndim(v) >= 1 else v for k, v in feeds.items()}


def take_index(feeds: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The samples at the given indices."""
    return {k: v[index] if np.ndim(v) >= 1 else v for k, v in feeds.items()}
