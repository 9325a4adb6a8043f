"""Checking loose YAML values against Python type hints, with locations in the errors.

Supports the types pass parameters use: bool, int, float, str, Literal[...],
list[X], dict[str, X], X | Y and Optional[X].
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from edgeopt.errors import UserError


class ValueProblem(Exception):
    """A value does not fit; `where` is the location below the caller's."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.message = message
        self.where = where


def did_you_mean(word: str, choices) -> str:
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        item = typing.get_args(hint)[0]
        plural = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}
        return f"a list of {plural.get(item, type_name(item))}"
    if origin is dict:
        return f"a mapping of name to {type_name(typing.get_args(hint)[1])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any) -> Any:
    """Return value converted to `hint`, or raise ValueProblem."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise ValueProblem(f"must be {type_name(hint)}, got {value!r}{did_you_mean(value, choices)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueProblem as exc:
                problems.append(exc)
        # Prefer the message of the alternative that got furthest (a nested location).
        nested = [p for p in problems if p.where]
        if nested:
            raise nested[0]
        raise ValueProblem(f"must be {type_name(hint)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item is str:
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ValueProblem(f"must be {type_name(hint)}, got {value!r}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(coerce(v, item))
            except ValueProblem as exc:
                raise ValueProblem(exc.message, f"[{i}]{exc.where}") from None
        return out
    if origin is dict:
        key_t, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ValueProblem(f"must be {type_name(hint)}, got {value!r}")
        out = {}
        for k, v in value.items():
            try:
                out[str(k)] = coerce(v, item)
            except ValueProblem as exc:
                raise ValueProblem(exc.message, f".{k}{exc.where}") from None
        return out
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported parameter type {hint!r}")
    raise ValueProblem(f"must be {type_name(hint)}, got {value!r}")


def check_bounds(value: Any, meta: dict) -> None:
    """Numeric bounds from param(ge=, gt=, le=, lt=); applied to numbers, and to each number in a mapping."""
    if isinstance(value, dict):
        for k, v in value.items():
            try:
                check_bounds(v, meta)
            except ValueProblem as exc:
                raise ValueProblem(exc.message, f".{k}") from None
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo = meta.get("ge") if meta.get("ge") is not None else meta.get("gt")
    hi = meta.get("le") if meta.get("le") is not None else meta.get("lt")
    bad = ((meta.get("ge") is not None and value < meta["ge"])
           or (meta.get("gt") is not None and value <= meta["gt"])
           or (meta.get("le") is not None and value > meta["le"])
           or (meta.get("lt") is not None and value >= meta["lt"]))
    if bad:
        left = "[" if meta.get("ge") is not None else "("
        right = "]" if meta.get("le") is not None else ")"
        if lo is not None and hi is not None:
            rng = f"in {left}{lo}, {hi}{right}"
        elif lo is not None:
            rng = f">= {lo}" if meta.get("ge") is not None else f"> {lo}"
        else:
            rng = f"<= {hi}" if meta.get("le") is not None else f"< {hi}"
        raise ValueProblem(f"must be {rng}, got {value!r}")


def build_params(params_cls: type, raw: Any, where: str) -> Any:
    """Make a pass's Params dataclass from a recipe mapping; UserError names `where.field`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of parameters, got {raw!r}")
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"{where}: unknown parameter {key!r}{did_you_mean(key, fields)} "
                            f"(parameters: {known})")
        try:
            values[key] = coerce(value, hints[key])
            check_bounds(values[key], dict(fields[key].metadata))
        except ValueProblem as exc:
            raise UserError(f"{where}.{key}{exc.where}: {exc.message}") from None
    try:
        params = params_cls(**values)
    except TypeError as exc:
        missing = [f for f, spec in fields.items() if f not in values
                   and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING]
        if missing:
            raise UserError(f"{where}: missing required parameter {missing[0]!r}") from None
        raise
    except ValueError as exc:  # cross-field checks raised by __post_init__
        raise UserError(f"{where}: {exc}") from None
    return params


def describe_params(params_cls: type) -> list[dict]:
    """Name, type, default, bounds and help of each parameter (for `edgeopt passes NAME`)."""
    hints = typing.get_type_hints(params_cls)
    own = params_cls.__dict__.get("__annotations__", {})
    rows = []
    # A pass's own parameters first, then those it inherits from a shared declaration.
    for f in sorted(dataclasses.fields(params_cls), key=lambda f: f.name not in own):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        meta = dict(f.metadata)
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = ", ".join(f"{ops[k]} {meta[k]}" for k in ("gt", "ge", "lt", "le") if meta.get(k) is not None)
        rows.append({"name": f.name, "type": type_name(hints[f.name]), "default": default,
                     "bounds": bounds or None, "help": meta.get("help", "")})
    return rows
