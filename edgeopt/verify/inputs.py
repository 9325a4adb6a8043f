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


DISTRIBUTIONS = {"uniform": ("low", "high"), "normal": ("mean", "std")}  # and their parameters


@dataclass(frozen=True)
class InputDistribution:
    """The recipe's `random_inputs: {NAME: ...}` for an input it has no data for, so seeded random inputs can
    match the model's preprocessing: uniform in [low, high) (whole numbers low..high-1 for an integer
    input: token ids), or normal with mean and std (float inputs only). recipe/load.py validates it."""

    distribution: str = "normal"
    low: float = 0.0
    high: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def draw(self, rng: np.random.Generator, shape: list[int], dtype: np.dtype) -> np.ndarray:
        if np.issubdtype(dtype, np.integer):
            return rng.integers(int(self.low), int(self.high), size=shape).astype(dtype)
        if self.distribution == "uniform":
            return rng.uniform(self.low, self.high, size=shape).astype(dtype)
        return (self.mean + self.std * rng.standard_normal(shape)).astype(dtype)

    def describe(self) -> str:
        if self.distribution == "uniform":
            return f"uniform [{self.low:g}, {self.high:g})"
        return f"normal (mean {self.mean:g}, std {self.std:g})"


def distribution_problem(dist: InputDistribution, dtype: np.dtype) -> str | None:
    """Why `dist` cannot describe an input of `dtype`, or None."""
    if np.issubdtype(dtype, np.integer):
        if dist.distribution != "uniform" or dist.low != int(dist.low) or dist.high != int(dist.high):
            return (f"the input is {dtype.name}: give it distribution uniform with whole numbers low and high "
                    "(it draws low..high-1, e.g. token ids)")
        return None
    if not np.issubdtype(dtype, np.floating):
        return f"the input is {dtype.name}: only float and integer inputs take a distribution"
    return None


def random_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0,
                  free_batch: int = RANDOM_BATCH, distributions: dict | None = None,
                  fill_fixed_batch: bool = False) -> Inputs:
    """Seeded inputs: standard normal for floats, zeros for integers and booleans, unless `distributions`
    (the recipe's random_inputs, {name: InputDistribution}) describes the input.

    A batch dim the model leaves free (and the caller did not fix) gets `free_batch` samples. With
    `fill_fixed_batch`, a model whose batch is fixed at B gets about `free_batch` samples too: the
    multiple of B at or above it, which run_batched runs B at a time (several runs; a fixed batch of 1
    would otherwise be verified on one random sample). Inputs whose dim 0 is not B are shared by every run.
    """
    from edgeopt.verify.runtime import static_batch  # (runtime opens sessions: imported when needed)

    rng = np.random.default_rng(seed)
    distributions = distributions or {}
    axes = batch_axes(model)
    fixed = None if axes or not fill_fixed_batch else static_batch(model)
    runs = -(-free_batch // fixed) if fixed else 1
    feeds = Feeds({}, axes)
    for vi in graph_inputs(model):
        shape = list(shapes[vi.name])
        dims = vi.type.tensor_type.shape.dim
        axis = axes.get(vi.name, 0)
        if len(dims) > axis and not dims[axis].HasField("dim_value") and len(shape) > 1 and shape[axis] == 1:
            shape[axis] = free_batch
        if fixed and runs > 1:
            if len(shape) > 1 and shape[0] == fixed:
                shape[0] = fixed * runs
                feeds.axes[vi.name] = 0
            else:
                feeds.axes[vi.name] = None  # shared by every run
        dtype = _dtype_of(vi)
        if vi.name in distributions:
            feeds[vi.name] = distributions[vi.name].draw(rng, shape, dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    described = "".join(f", {name}: {d.describe()}" for name, d in distributions.items())
    return Inputs(feeds=feeds, labels=None, source=f"random (seed {seed}{described})")
