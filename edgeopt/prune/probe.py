"""Intermediate tensors on calibration data, a chunk of samples at a time (one onnxruntime session).

`edgeopt.graph.activations.collect_activations` returns every sample at once;
pruning statistics only need running sums, and a whole calibration set of
feature maps does not fit in memory on bigger models.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx


from edgeopt.verify.feeds import sample_count, take, take_index
from edgeopt.verify.runtime import make_session, static_batch


def subsample(data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[str, np.ndarray]:
    """At most max_samples samples, chosen with the seed (kept in their original order)."""
    n = sample_count(data)
    if n <= max_samples:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    return take_index(data, idx)


class Probe:
    """Run a model with some intermediate tensors exposed as outputs."""

    def __init__(self, model: onnx.ModelProto, names: list[str]):
        self.names = list(dict.fromkeys(names))
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        # Only the named tensors are outputs, so onnxruntime drops the nodes after them.
        kept = {o.name: o for o in model.graph.output if o.name in self.names}
        del probe.graph.output[:]
        for name in self.names:
            if name in kept:
                probe.graph.output.add().CopyFrom(kept[name])
            else:
                probe.graph.output.add().name = name  # untyped: onnxruntime infers the type
        self.session = make_session(probe)
        self.static_batch = static_batch(model)

    def chunks(self, data: dict[str, np.ndarray], chunk: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """The named tensors, `chunk` samples at a time (a multiple of a fixed batch)."""
        n = sample_count(data)
        step = chunk
        if self.static_batch:
            step = self.static_batch * max(1, chunk // self.static_batch)
        for start in range(0, n, step):
            feeds = take(data, start, start + step)
            if self.static_batch and sample_count(feeds) % self.static_batch:
                break
            yield dict(zip(self.names, self.session.run(self.names, feeds)))

    def all(self, data: dict[str, np.ndarray], chunk: int = 64) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        for out in self.chunks(data, chunk):
            for name, arr in out.items():
                parts[name].append(arr)
        return {n: np.concatenate(p) for n, p in parts.items()}
