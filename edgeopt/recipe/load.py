"""YAML recipe -> validated Recipe. Every error names the file and the field."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeopt.checks import CHECKS
from edgeopt.errors import UserError
from edgeopt.passes import get_pass, pass_names
from edgeopt.recipe.values import ValueProblem, build_params, coerce, did_you_mean
from edgeopt.verify.fidelity import METRICS, FidelitySpec
from edgeopt.verify.inputs import DISTRIBUTIONS, InputDistribution

TOP_LEVEL_KEYS = ("model", "output", "device", "input_shapes", "data", "calibration_data", "random_inputs",
                  "fidelity", "passes", "checks", "seed", "search")  # search: read by `edgeopt tune` (edgeopt/tune); `run` ignores it


@dataclass
class PassSpec:
    index: int
    name: str
    params: Any  # the pass's Params dataclass instance
    raw_params: dict  # as written (after --set), for reports


@dataclass
class Recipe:
    path: Path | None
    model: Path
    output: Path | None
    devices: list[str]
    input_shapes: dict[str, list[int]]
    data: Path | None
    passes: list[PassSpec]
    checks: dict[str, float]
    seed: int = 0
    calibration_data: Path | None = None  # what data-driven passes fit on; default: `data`
    fidelity: FidelitySpec = field(default_factory=FidelitySpec)  # the output and metric checks look at
    random_inputs: dict[str, InputDistribution] = field(default_factory=dict)  # inputs without data: how to draw them


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"{path}: recipe file not found; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the recipe ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}; fix the syntax") from None


def apply_overrides(doc: dict, overrides: list[str], where: str) -> dict:
    """`--set passes.2.ratio=0.5`: set a value anywhere in the recipe before validation."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. passes.2.ratio=0.5")
        value = yaml.safe_load(text) if text else ""
        parts = key.split(".")
        node: Any = doc
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, parts, depth, item)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, item)] = value
        else:
            node[last] = value
    return doc


def _index(node: list, part: str, item: str) -> int:
    try:
        i = int(part)
        node[i]
        return i
    except (ValueError, IndexError):
        raise UserError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)}") from None


def _step(node: Any, part: str, parts: list[str], depth: int, item: str) -> Any:
    if isinstance(node, list):
        i = _index(node, part, item)
        if parts[0] == "passes" and depth == 1:
            # passes.2.ratio reaches into the pass's parameters; passes.2.prune_channels.ratio too.
            entry = node[i]
            if isinstance(entry, str):
                entry = node[i] = {entry: {}}
            if isinstance(entry, dict) and len(entry) == 1:
                name = next(iter(entry))
                if entry[name] is None:
                    entry[name] = {}
                nxt = parts[depth + 1] if depth + 1 < len(parts) else None
                return entry if nxt == name else entry[name]
        return node[i]
    if not isinstance(node, dict):
        raise UserError(f"--set {item!r}: {part!r} is not inside a mapping")
    return node.setdefault(part, {})


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    doc = read_yaml(path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a recipe is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}; "
                        f"got {type(doc).__name__}")
    doc = apply_overrides(doc, list(overrides or []), str(path))
    return parse_recipe(doc, path)


def parse_recipe(doc: dict, path: Path) -> Recipe:
    base = path.parent
    where = str(path)
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)} "
                            f"(keys: {', '.join(TOP_LEVEL_KEYS)})")
    if "model" not in doc:
        raise UserError(f"{where}: missing 'model:' (the path of the .onnx model to optimize)")
    model = _path(doc["model"], base, f"{where}: model")
    output = _path(doc["output"], base, f"{where}: output") if doc.get("output") is not None else None
    data = _path(doc["data"], base, f"{where}: data") if doc.get("data") is not None else None
    calibration = (_path(doc["calibration_data"], base, f"{where}: calibration_data")
                   if doc.get("calibration_data") is not None else None)
    devices = _field(doc, "device", str | list[str], where) or []
    input_shapes = _field(doc, "input_shapes", dict[str, list[int]], where) or {}
    for name, dims in input_shapes.items():
        if not dims or any(d <= 0 for d in dims):
            raise UserError(f"{where}: input_shapes.{name}: dims must be positive integers, got {dims}")
    seed = _field(doc, "seed", int, where) or 0
    checks = _parse_checks(doc.get("checks"), where)
    fidelity = _parse_fidelity(doc.get("fidelity"), where)
    random = _parse_random_inputs(doc.get("random_inputs"), where)
    if random and data is not None:
        raise UserError(f"{where}: random_inputs: the recipe has `data:`, which gives every input; random_inputs "
                        "describes inputs you have no data for: drop one of the two")
    passes = _parse_passes(doc.get("passes"), where)
    return Recipe(path=path, model=model, output=output, devices=list(devices) if isinstance(devices, list) else [devices],
                  input_shapes=input_shapes, data=data, passes=passes, checks=checks, seed=seed,
                  calibration_data=calibration, fidelity=fidelity, random_inputs=random)


def _parse_fidelity(value: Any, where: str) -> FidelitySpec:
    """`fidelity: {output: NAME, metric: cosine | top1 | max_abs}` (both optional)."""
    if value is None:
        return FidelitySpec()
    if not isinstance(value, dict):
        raise UserError(f"{where}: fidelity: expected a mapping like {{output: NAME, metric: top1}}")
    for key in value:
        if key not in ("output", "metric"):
            raise UserError(f"{where}: fidelity.{key}: unknown key{did_you_mean(str(key), ('output', 'metric'))} "
                            "(keys: output, metric)")
    metric = value.get("metric", "cosine")
    if metric not in METRICS:
        raise UserError(f"{where}: fidelity.metric: {metric!r} is not one of {', '.join(METRICS)}"
                        f"{did_you_mean(str(metric), METRICS)}")
    output = value.get("output")
    if output is not None and not isinstance(output, str):
        raise UserError(f"{where}: fidelity.output: expected the name of a model output, got {output!r}")
    return FidelitySpec(output=output, metric=metric)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise UserError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _parse_random_inputs(value: Any, where: str) -> dict[str, InputDistribution]:
    """`random_inputs: {NAME: {distribution: uniform, low: 0, high: 1}}` or `{distribution: normal, mean: 0.5,
    std: 0.25}`: how verification draws the inputs it has no data for (names are checked against the model
    when the run loads it)."""
    if value is None:
        return {}
    example = "{x: {distribution: uniform, low: 0, high: 1}}"
    if not isinstance(value, dict) or not value:
        raise UserError(f"{where}: random_inputs: expected a mapping of input names to distributions, like {example}")
    out = {}
    for name, spec in value.items():
        loc = f"{where}: random_inputs.{name}"
        if not isinstance(name, str):
            raise UserError(f"{loc}: expected the name of a model input")
        if not isinstance(spec, dict):
            raise UserError(f"{loc}: expected a mapping like {{distribution: uniform, low: 0, high: 1}} or "
                            f"{{distribution: normal, mean: 0.5, std: 0.25}}, got {spec!r}")
        kind = spec.get("distribution")
        if kind is None:
            raise UserError(f"{loc}: missing `distribution:` ({' or '.join(DISTRIBUTIONS)})")
        if kind not in DISTRIBUTIONS:
            raise UserError(f"{loc}.distribution: {kind!r} is not one of {', '.join(DISTRIBUTIONS)}"
                            f"{did_you_mean(str(kind), DISTRIBUTIONS)}")
        keys = ("distribution", *DISTRIBUTIONS[kind])
        for key in spec:
            if key not in keys:
                other = next((k for k, ps in DISTRIBUTIONS.items() if key in ps), None)
                why = f"a parameter of distribution {other}, not {kind}" if other else \
                    f"unknown key{did_you_mean(str(key), keys)}"
                raise UserError(f"{loc}.{key}: {why} (keys of {kind}: {', '.join(keys)})")
        params = {key: _number(spec[key], f"{loc}.{key}") for key in DISTRIBUTIONS[kind] if key in spec}
        dist = InputDistribution(kind, **params)
        if kind == "uniform" and not dist.low < dist.high:
            raise UserError(f"{loc}: low must be below high, got low {dist.low:g}, high {dist.high:g}")
        if kind == "normal" and not dist.std > 0:
            raise UserError(f"{loc}.std: must be above 0, got {dist.std:g}")
        out[name] = dist
    return out


def _field(doc: dict, key: str, hint: Any, where: str) -> Any:
    if doc.get(key) is None:
        return None
    try:
        return coerce(doc[key], hint)
    except ValueProblem as exc:
        raise UserError(f"{where}: {key}{exc.where}: {exc.message}") from None


def _path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: must be a path string, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def _parse_checks(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: checks: expected a mapping like {{min_cosine: 0.99}}, got {raw!r}")
    out = {}
    for name, limit in raw.items():
        if name not in CHECKS:
            raise UserError(f"{where}: checks.{name}: unknown check{did_you_mean(name, CHECKS)} "
                            f"(checks: {', '.join(CHECKS)})")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise UserError(f"{where}: checks.{name}: must be a number, got {limit!r}")
        out[name] = float(limit)
    return out


def _parse_passes(raw: Any, where: str) -> list[PassSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserError(f"{where}: passes: expected a list of passes (- fold_batchnorm), got {type(raw).__name__}")
    names = pass_names()
    specs = []
    for i, entry in enumerate(raw):
        loc = f"{where}: passes[{i}]"
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, params = next(iter(entry.items()))
        else:
            raise UserError(f"{loc}: expected a pass name or {{name: {{parameters}}}}, got {entry!r}")
        cls = get_pass(name) if isinstance(name, str) and name in names else None
        if cls is None:
            raise UserError(f"{loc}: unknown pass {name!r}{did_you_mean(name, names)} "
                            "(list them with `edgeopt passes`)")
        params = params if params is not None else {}
        spec_params = build_params(cls.Params, params, f"{loc}.{name}")
        specs.append(PassSpec(index=i, name=name, params=spec_params,
                              raw_params=dict(params) if isinstance(params, dict) else {}))
    return specs
