"""Input shapes: parse `NAME=1x3x224x224`, resolve dynamic dims, fix them in a model copy."""

from __future__ import annotations

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


def resolve_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Concrete shape of every graph input.

    Dims come from `overrides` first, then from the model. A symbolic leading
    (batch) dim defaults to 1; any other unknown dim is an error that names
    the input and says how to fix it.
    """
    overrides = dict(overrides or {})
    inputs = graph_inputs(model)
    names = {vi.name for vi in inputs}
    for name in overrides:
        if name not in names:
            raise UserError(
                f"input shape for {name!r}: the model has no such input; inputs are {sorted(names)}"
            )
    shapes: dict[str, list[int]] = {}
    for vi in inputs:
        if vi.name in overrides:
            shapes[vi.name] = list(overrides[vi.name])
            continue
        if not vi.type.HasField("tensor_type"):
            raise UserError(f"input {vi.name!r}: only tensor inputs are supported")
        dims = vi.type.tensor_type.shape.dim
        shape = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(1)
            else:
                raise UserError(
                    f"input {vi.name!r}: dim {axis} is dynamic ({dim.dim_param or '?'}); "
                    f"give it with --input-shape {vi.name}=" + "x".join(
                        str(d.dim_value) if d.dim_value > 0 else "N" for d in dims)
                    + " (or input_shapes in the recipe)"
                )
        shapes[vi.name] = shape
    return shapes


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of the model whose inputs have the given static shapes (value_info cleared)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in shapes:
            vi.type.tensor_type.shape.ClearField("dim")
            for d in shapes[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = d
    del fixed.graph.value_info[:]
    return fixed
