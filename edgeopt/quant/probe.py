"""One onnxruntime session that runs a model with any of its weights swapped, without rebuilding it.

The chosen weight initializers become graph inputs, so trying a quantized
version of a layer is one run with that layer's decoded weights fed in (no
new model, no new session). The reference is the same session fed the float
weights, so both sides of a comparison run the same kernels.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgeopt.graph.activations import run_chunk
from edgeopt.graph.shapes import output_batch_axes
from edgeopt.verify.feeds import concat_samples, sample_count, take
from edgeopt.verify.runtime import make_session, static_batch

CHUNK = 256  # samples per run at most (a model with a fixed batch runs that many; big inputs fewer)


class WeightProbe:
    def __init__(self, model: onnx.ModelProto, weights: dict[str, np.ndarray]):
        """model: with `weights` (name -> float array) among its initializers."""
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        keep = [t for t in probe.graph.initializer if t.name not in weights]
        missing = set(weights) - {t.name for t in probe.graph.initializer}
        if missing:
            raise ValueError(f"not initializers of the model: {sorted(missing)[:3]}")
        del probe.graph.initializer[:]
        probe.graph.initializer.extend(keep)
        for name, array in weights.items():
            elem = helper.np_dtype_to_tensor_dtype(array.dtype)
            probe.graph.input.append(helper.make_tensor_value_info(name, elem, list(array.shape)))
        self.session = make_session(probe)
        self.weights = weights
        self.runs = 0
        self._model = model  # the original: its weights are not batched inputs (for the run size)
        self._fixed = static_batch(model)
        self._axes = output_batch_axes(model)
        self._outputs = [o.name for o in model.graph.output]

    def run(self, feeds: dict[str, np.ndarray], swapped: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The outputs on `feeds` with the `swapped` weights in place of the float ones (a model with a
        fixed batch needs a multiple of it)."""
        self.runs += 1
        weights = {**self.weights, **(swapped or {})}
        n = sample_count(feeds)
        step = self._fixed or min(CHUNK, run_chunk(self._model, feeds, "probing quantized weights"))
        # chunks sliced from the data only: a weight must never be cut along an axis that happens to match
        starts = range(0, n, step)
        parts = [self.session.run(None, {**take(feeds, i, i + step), **weights}) for i in starts]
        sizes = [min(step, n - i) for i in starts]
        return [concat_samples([p[j] for p in parts], sizes, self._axes.get(name))
                for j, name in enumerate(self._outputs)]
