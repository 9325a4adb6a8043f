"""Input shapes: parse `NAME=1x3x224x224`, and resolve every input's dims from overrides, data, the model."""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.errors import UserError


def parse_shape_spec(spec: str) -> tuple[str, list[int]]:
    """`input=1x3x224x224` -> ("input", [1, 3, 224, 224])."""
    name, sep, dims = spec.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = [int(d) for d in dims.lower().split("x")]
        if any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise UserError(
            f"--input-shape {spec!r}: expected NAME=DIMS with positive dims, e.g. input=1x3x224x224"
        ) from None
    return name, shape


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exports list both)."""
    inits = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list:
    return list(vi.type.tensor_type.shape.dim) if vi.type.HasField("tensor_type") else []


def _static(dim) -> bool:
    return dim.HasField("dim_value") and dim.dim_value > 0


def batch_symbol(model: onnx.ModelProto) -> str:
    """The name the model gives its batch dim: the first input's axis-0 dim_param ('' if none)."""
    return next((_dims(vi)[0].dim_param for vi in graph_inputs(model) if _dims(vi) and _dims(vi)[0].dim_param), "")


def batch_axes(model: onnx.ModelProto, data: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """The free axis of each input that holds samples: axis 0, or wherever the batch symbol sits
    (the first input's axis-0 dim_param: silero's state is [2, batch, 128]); for unnamed dims, the
    first free axis whose length in `data` is the sample count."""
    inputs = graph_inputs(model)
    symbol = batch_symbol(model)
    samples = next((len(v) for v in (data or {}).values() if np.ndim(v) >= 1), None)
    axes = {}
    for vi in inputs:
        dims = _dims(vi)
        free = [a for a, d in enumerate(dims) if not _static(d)]
        named = [a for a in free if symbol and dims[a].dim_param == symbol]
        by_size = [a for a in free if not dims[a].dim_param and vi.name in (data or {})
                   and np.ndim(data[vi.name]) == len(dims) and np.shape(data[vi.name])[a] == samples]
        if named or (0 in free) or by_size:
            axes[vi.name] = named[0] if named else (0 if 0 in free else by_size[0])
    return axes


def output_batch_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Each graph output's axis carrying the batch symbol (outputs without it are left out)."""
    symbol = batch_symbol(model)
    axes = {}
    for vo in model.graph.output if symbol else []:
        axis = next((a for a, d in enumerate(_dims(vo)) if d.dim_param == symbol), None)
        if axis is not None:
            axes[vo.name] = axis
    return axes


def data_dims(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> dict[str, list[int | None]]:
    """Dims the data's arrays fix: every free dim but the batch axis (None: left as the model has it).

    Only inputs where the data fixes some dim are listed.
    """
    axes = batch_axes(model, data)
    out = {}
    for vi in graph_inputs(model):
        array = data.get(vi.name)
        dims = _dims(vi)
        if array is None or np.ndim(array) != len(dims):
            continue
        fixed = [None if _static(d) or axis == axes.get(vi.name) else int(np.shape(array)[axis])
                 for axis, d in enumerate(dims)]
        if any(d is not None for d in fixed):
            out[vi.name] = fixed
    return out


def resolve_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None,
    data: dict[str, np.ndarray] | None = None,
) -> dict[str, list[int]]:
    """Concrete shape of every graph input.

    Dims come from `overrides` first, then from the data arrays' shapes for
    free dims (the batch axis excepted: a profile is per sample), then from the
    model. A free batch dim defaults to 1; any other unknown dim is an error
    that names the input and says how to fix it.
    """
    overrides = dict(overrides or {})
    inputs = graph_inputs(model)
    names = {vi.name for vi in inputs}
    for name in overrides:
        if name not in names:
            raise UserError(
                f"input shape for {name!r}: the model has no such input; inputs are {sorted(names)}"
            )
    from_data = data_dims(model, data) if data else {}
    axes = batch_axes(model, data)
    shapes: dict[str, list[int]] = {}
    for vi in inputs:
        if vi.name in overrides:
            shapes[vi.name] = list(overrides[vi.name])
            continue
        if not vi.type.HasField("tensor_type"):
            raise UserError(f"input {vi.name!r}: only tensor inputs are supported")
        dims = vi.type.tensor_type.shape.dim
        given = from_data.get(vi.name, [None] * len(dims))
        shape = []
        for axis, dim in enumerate(dims):
            if _static(dim):
                shape.append(dim.dim_value)
            elif given[axis] is not None:
                shape.append(given[axis])
            elif axis == axes.get(vi.name, 0):
                shape.append(1)
            else:
                raise UserError(
                    f"input {vi.name!r}: dim {axis} is dynamic ({dim.dim_param or '?'}); "
                    f"give it with --input-shape {vi.name}=" + "x".join(
                        str(d.dim_value) if d.dim_value > 0 else "N" for d in dims)
                    + " (or input_shapes in the recipe, or `data:` whose arrays have that shape)"
                )
        shapes[vi.name] = shape
    return shapes
