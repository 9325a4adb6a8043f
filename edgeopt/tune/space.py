"""The recipe's `search:` block -> a validated search space, and (space, sampled values) -> a trial recipe.

    search:
      passes.3.ratio: {low: 0.1, high: 0.6, step: 0.05}   # a range (ints when low/high are ints; log: true)
      passes.5.bits: [4, 8]                                # choices
      passes.4: [split_spatial, null]                      # swap the pass at 4, or drop it (null)
      passes.4.split_spatial.max_error: [0.1, 0.3]         # a parameter of one candidate pass only
      objectives: [est_latency_ms@myriadx, accuracy]
      sampler: tpe                                         # tpe (default) | nsga2 | random

Indices are positions in the recipe as written; a drop removes the pass after every choice is applied.
`passes.N.param` applies to whatever pass lands at N when that pass has `param` (and is not sampled
otherwise: the trial's params show only what it used); `passes.N.NAME.param` applies only when the pass
at N is NAME. A choice that names the pass already at N keeps that pass's written parameters; another
pass starts from its defaults, or from the parameters the choice gives ({split_spatial: {rank: 2}}).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from edgeopt.errors import UserError
from edgeopt.passes import get_pass, pass_names
from edgeopt.recipe.values import build_params, did_you_mean

RESERVED = ("objectives", "sampler")
SAMPLERS = ("tpe", "nsga2", "random")
DROP = "drop"  # the label of a `null` pass choice (Optuna and CSV see labels, not mappings)
_KEY = re.compile(r"^passes\.(\d+)(?:\.([A-Za-z_]\w*))?(?:\.([A-Za-z_]\w*))?$")


@dataclass(frozen=True)
class PassChoice:
    label: str
    entry: dict | None  # {name: {params}} or None (drop)


@dataclass(frozen=True)
class Dimension:
    key: str  # as written in the search block; also the Optuna parameter name
    index: int
    pass_name: str | None  # passes.N.NAME.param: only for that pass
    param: str | None  # None: the pass itself is chosen
    choices: tuple | None = None  # values (or PassChoice labels for a pass slot)
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int))

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,
                                   step=float(self.step) if self.step is not None else None)


@dataclass
class SearchSpace:
    where: str
    dims: list[Dimension]
    slots: dict[int, list[PassChoice]]  # pass slots with choices, by index
    objectives: list[str]  # as written (validated by objectives.py)
    sampler: str = "tpe"
    base: list = dataclasses.field(default_factory=list)  # the recipe's passes as written

    def suggest(self, trial) -> dict[str, Any]:
        """Sample one point, define-by-run: a slot's pass first, then only the parameters it has."""
        params: dict[str, Any] = {}
        for dim in self.dims:
            if dim.param is None:
                params[dim.key] = dim.suggest(trial)
        for dim in self.dims:
            if dim.param is not None and self.active(dim, params):
                params[dim.key] = dim.suggest(trial)
        return params

    def active(self, dim: Dimension, params: dict) -> bool:
        name = self.pass_at(dim.index, params)
        if name is None or (dim.pass_name is not None and dim.pass_name != name):
            return False
        return dim.param in _param_names(name)

    def pass_at(self, index: int, params: dict) -> str | None:
        entry = self._entry(index, params)
        return None if entry is None else next(iter(entry))

    def _entry(self, index: int, params: dict) -> dict | None:
        base_entry = _normalize(self.base[index])
        if index not in self.slots:
            return base_entry
        label = params[f"passes.{index}"]
        choice = next(c for c in self.slots[index] if c.label == label)
        if choice.entry is None:
            return None
        name, given = next(iter(choice.entry.items()))
        if given is None:  # a bare name: the written parameters when it is the pass already there
            given = base_entry[next(iter(base_entry))] if next(iter(base_entry)) == name else {}
        return {name: dict(given)}

    def applied(self, params: dict) -> dict:
        """The values a trial really used (step ranges rounded as in its recipe)."""
        steps = {d.key for d in self.dims if d.step is not None}
        return {k: round(v, 10) if k in steps and isinstance(v, float) else v for k, v in params.items()}

    def apply(self, doc: dict, params: dict) -> dict:
        """The recipe document of one trial: choices applied, dropped passes removed, no search block."""
        out = copy.deepcopy({k: v for k, v in doc.items() if k != "search"})
        entries = [self._entry(i, params) for i in range(len(self.base))]
        for dim in self.dims:
            if dim.param is not None and dim.key in params and entries[dim.index] is not None:
                name = next(iter(entries[dim.index]))
                # applied(): 0.30000000000000004 -> 0.3, in the trial and in its YAML alike
                entries[dim.index][name][dim.param] = self.applied(params)[dim.key]
        out["passes"] = [_compact(e) for e in entries if e is not None]
        return out


def _normalize(entry: Any) -> dict:
    if isinstance(entry, str):
        return {entry: {}}
    name, params = next(iter(entry.items()))
    return {name: dict(params or {})}


def _compact(entry: dict) -> Any:
    name, params = next(iter(entry.items()))
    return {name: params} if params else name


def _param_names(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_pass(name).Params)}


def parse_search(doc: dict, where: str) -> SearchSpace:
    """Validate the `search:` block of an already valid recipe document; UserError names the key."""
    raw = doc.get("search")
    if raw is None:
        raise UserError(f"{where}: no `search:` block; add one naming the values to vary, e.g. "
                        "search: {passes.3.ratio: {low: 0.1, high: 0.6}, objectives: [est_latency_ms, accuracy]}")
    if not isinstance(raw, dict):
        raise UserError(f"{where}: search: expected a mapping of recipe keys to ranges or choices, "
                        f"got {type(raw).__name__}")
    base = list(doc.get("passes") or [])
    space = SearchSpace(where=where, dims=[], slots={}, objectives=[], base=base)
    objectives = raw.get("objectives")
    if objectives is not None:
        if isinstance(objectives, str):
            objectives = [objectives]
        if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
            raise UserError(f"{where}: search.objectives: expected a list of objective names, "
                            f"e.g. [est_latency_ms@myriadx, accuracy], got {objectives!r}")
        space.objectives = list(objectives)
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise UserError(f"{where}: search.sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}"
                        f"{did_you_mean(str(sampler), SAMPLERS)}")
    space.sampler = sampler
    keys = [k for k in raw if k not in RESERVED]
    # pass slots first: a parameter key is checked against the candidates of its slot
    for key in sorted(keys, key=lambda k: _KEY.match(str(k)) is None or _KEY.match(str(k)).group(2) is not None):
        match = _KEY.match(str(key))
        loc = f"{where}: search.{key}"
        if match is None:
            raise UserError(f"{loc}: unknown key; expected passes.N (choose the pass at N), passes.N.PARAM, "
                            f"passes.N.PASS.PARAM, {', '.join(RESERVED)}")
        index = int(match.group(1))
        if index >= len(base):
            raise UserError(f"{loc}: the recipe has {len(base)} passes (passes.0 to passes.{len(base) - 1})")
        second, third = match.group(2), match.group(3)
        if second is None:
            space.slots[index] = _pass_choices(raw[key], base[index], loc)
            space.dims.append(Dimension(key, index, None, None, choices=tuple(c.label for c in space.slots[index])))
            continue
        pass_name, param = (second, third) if third is not None else (None, second)
        candidates = ([next(iter(c.entry)) for c in space.slots[index] if c.entry is not None]
                      if index in space.slots else [next(iter(_normalize(base[index])))])
        if pass_name is not None and pass_name not in candidates:
            raise UserError(f"{loc}: {pass_name!r} is never the pass at passes.{index} "
                            f"(candidates: {', '.join(candidates)})")
        having = [c for c in candidates if param in _param_names(c) and (pass_name is None or c == pass_name)]
        if not having:
            names = sorted(set().union(*(_param_names(c) for c in candidates)))
            raise UserError(f"{loc}: no candidate pass at passes.{index} ({', '.join(candidates)}) has a "
                            f"parameter {param!r}{did_you_mean(param, names)}")
        dim = _values(raw[key], key, index, pass_name, param, loc)
        for name in having:  # every value must be one the pass accepts
            for value in (dim.choices if dim.choices is not None else (dim.low, dim.high)):
                build_params(get_pass(name).Params, {param: value}, f"{loc}: {name}")
        space.dims.append(dim)
    if not space.dims:
        raise UserError(f"{where}: search: names no recipe value to vary; add e.g. passes.3.ratio: {{low: 0.1, high: 0.6}}")
    space.dims.sort(key=lambda d: (d.index, d.param is not None, d.key))  # a stable order for the sampler
    return space


def _pass_choices(value: Any, base_entry: Any, loc: str) -> list[PassChoice]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{loc}: expected a list of pass names (null drops the pass), e.g. [split_spatial, null]")
    names = pass_names()
    choices: list[PassChoice] = []
    for item in value:
        if item is None:
            choices.append(PassChoice(DROP, None))
            continue
        if isinstance(item, str):
            name, params = item, None
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = params or {}
        else:
            raise UserError(f"{loc}: expected a pass name, {{name: {{parameters}}}} or null, got {item!r}")
        if name not in names:
            raise UserError(f"{loc}: unknown pass {name!r}{did_you_mean(str(name), names)} "
                            "(list them with `edgeopt passes`)")
        if params is not None:
            build_params(get_pass(name).Params, params, f"{loc}.{name}")
        label = name if isinstance(item, str) else f"{name}#{len(choices)}"
        if any(c.label == label for c in choices):
            raise UserError(f"{loc}: {label!r} is listed twice")
        choices.append(PassChoice(label, {name: params}))
    return choices


def _values(value: Any, key: str, index: int, pass_name, param: str, loc: str) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise UserError(f"{loc}: an empty list of choices; give at least one value")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            raise UserError(f"{loc}: choices must be numbers, strings, true/false or null, got {value!r}")
        if len(set(map(repr, value))) != len(value):
            raise UserError(f"{loc}: a choice is listed twice in {value!r}")
        return Dimension(key, index, pass_name, param, choices=tuple(value))
    if not isinstance(value, dict):
        raise UserError(f"{loc}: expected a list of choices or a range {{low: 0.1, high: 0.6}}, got {value!r}")
    unknown = [k for k in value if k not in ("low", "high", "step", "log")]
    if unknown:
        raise UserError(f"{loc}.{unknown[0]}: unknown key{did_you_mean(str(unknown[0]), ('low', 'high', 'step', 'log'))} "
                        "(keys: low, high, step, log)")
    for k in ("low", "high"):
        if k not in value:
            raise UserError(f"{loc}: a range needs low and high, e.g. {{low: 0.1, high: 0.6}}")
        if isinstance(value[k], bool) or not isinstance(value[k], (int, float)):
            raise UserError(f"{loc}.{k}: must be a number, got {value[k]!r}")
    low, high, step, log = value["low"], value["high"], value.get("step"), value.get("log", False)
    if not low < high:
        raise UserError(f"{loc}: low ({low}) must be below high ({high})")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise UserError(f"{loc}.step: must be a positive number, got {step!r}")
    if not isinstance(log, bool):
        raise UserError(f"{loc}.log: must be true or false, got {log!r}")
    if log and (step is not None or low <= 0):
        raise UserError(f"{loc}.log: a log range needs low > 0 and no step")
    return Dimension(key, index, pass_name, param, low=low, high=high, step=step, log=log)
