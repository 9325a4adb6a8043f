"""Intermediate tensors on calibration data, a chunk of samples at a time, in bounded memory.

Pruning statistics only need running sums (APoZ), Gram matrices (ThiNet) or
normal equations (reconstruction), so they read the calibration set a chunk at
a time through edgeopt.graph.activations: each onnxruntime run takes the samples
that fit in its budget, and a chunk that would not fit whole (a big feature map
at 64 samples) is smaller, or its values come in groups (one dict per group).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx

from edgeopt.graph.activations import Footprint, Stream, footprint, plan
from edgeopt.verify.feeds import concat_samples, sample_count, take_index

CHUNK = 64  # samples per chunk the statistics see (fewer when one value of 64 samples would not fit)


def subsample(data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[str, np.ndarray]:
    """At most max_samples samples, chosen with the seed (kept in their original order)."""
    n = sample_count(data)
    if n <= max_samples:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    return take_index(data, idx)


def common_chunk(fp: Footprint, names: list[str], chunk: int = CHUNK) -> int:
    """The chunk every one of `names` can be read in on its own (streams read in step must agree)."""
    return min((plan(fp, [n], chunk).chunk for n in names), default=chunk)


class Probe:
    """Run a model with some intermediate tensors exposed as outputs (only those: later nodes are dropped).

    fp: the footprint to plan with (a pruned model can use its original's: its values are no larger)."""

    def __init__(self, model: onnx.ModelProto, names: list[str], fp: Footprint | None = None,
                 what: str = "collecting activations for pruning"):
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.fp = fp
        self.what = what

    def chunks(self, data: dict[str, np.ndarray], chunk: int = CHUNK) -> Iterator[dict[str, np.ndarray]]:
        """The named tensors, `chunk` samples at a time (a multiple of a fixed batch; fewer when one value
        would not fit). When all of them do not fit at once, each dict holds one group of them, every chunk
        of a group before the next group."""
        fp = self.fp or footprint(self.model, data)
        for piece in Stream(self.model, self.names, data, chunk=chunk, what=self.what, fp=fp):
            yield piece.values

    def all(self, data: dict[str, np.ndarray], chunk: int = CHUNK) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        for out in self.chunks(data, chunk):
            for name, arr in out.items():
                parts[name].append(arr)
        return {n: concat_samples(p, [len(a) for a in p], 0) for n, p in parts.items() if p}
