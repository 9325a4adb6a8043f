"""The inputs a run feeds the model: the recipe's .npz data, or seeded random tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgeopt.errors import UserError
from edgeopt.graph.shapes import batch_axes, graph_inputs
from edgeopt.verify.feeds import Feeds, sample_count, take

RANDOM_BATCH = 8  # samples of random input when the batch dim is free: top-1 agreement needs a few


@dataclass
class Inputs:
    feeds: dict[str, np.ndarray]  # every graph input, batch first
    labels: np.ndarray | None
    source: str  # "data.npz" or "random (seed 0)"

    @property
    def batch(self) -> int:
        return sample_count(self.feeds)

    def first(self, n: int = 1) -> dict[str, np.ndarray]:
        """The first n samples, e.g. a batch-1 feed for latency measurement."""
        return take(self.feeds, n)


def _dtype_of(vi: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def load_data(path: Path, model: onnx.ModelProto) -> Inputs:
    """Read an .npz with one array per graph input (by name) and optionally `labels`."""
    if not path.exists():
        raise UserError(f"{path}: data file not found; check the `data:` path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for a bad archive
        raise UserError(f"{path}: not a readable .npz archive ({exc}); save it with numpy.savez") from None
    feeds = Feeds({}, batch_axes(model, arrays))
    for vi in graph_inputs(model):
        if vi.name not in arrays:
            raise UserError(f"{path}: no array named {vi.name!r} (the model's input); "
                            f"the file has {sorted(arrays)}")
        feeds[vi.name] = arrays[vi.name].astype(_dtype_of(vi), copy=False)
    # Arrays whose length differs from the first one's are batch-second or shared (verify/feeds.py).
    labels = arrays.get("labels")
    if labels is not None:
        labels = labels.reshape(-1).astype(np.int64)
        if len(labels) != sample_count(feeds):
            raise UserError(f"{path}: `labels` has {len(labels)} entries but the inputs have "
                            f"{sample_count(feeds)} samples")
    return Inputs(feeds=feeds, labels=labels, source=path.name)


def random_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0,
                  free_batch: int = RANDOM_BATCH) -> Inputs:
    """Seeded inputs: standard normal for floats, zeros for integers and booleans.

    A batch dim the model leaves free (and the caller did not fix) gets `free_batch` samples.
    """
    rng = np.random.default_rng(seed)
    axes = batch_axes(model)
    feeds = Feeds({}, axes)
    for vi in graph_inputs(model):
        shape = list(shapes[vi.name])
        dims = vi.type.tensor_type.shape.dim
        axis = axes.get(vi.name, 0)
        if len(dims) > axis and not dims[axis].HasField("dim_value") and len(shape) > 1 and shape[axis] == 1:
            shape[axis] = free_batch
        dtype = _dtype_of(vi)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return Inputs(feeds=feeds, labels=None, source=f"random (seed {seed})")
