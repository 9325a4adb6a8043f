"""The Optuna study: setup from the recipe, then the ask/tell loop over an executor.

The study lives in SQLite (OUT/study.db by default) under a name derived from the recipe's content, so
running the same command again resumes it and several `edgeopt tune` processes can share it. `trials` is
the number of finished trials the study should hold. Results are told in trial order, and trial k is
asked only after trial k - window was told: with --seed, the same trials come out whatever the timing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeopt.errors import UserError
from edgeopt.recipe.load import Recipe, parse_recipe, read_yaml
from edgeopt.tune.objectives import Objective, parse_objectives
from edgeopt.tune.space import SearchSpace, parse_search

RESULT_ATTR = "edgeopt"  # the trial's result dict, as a user attribute of the Optuna trial
PATH_KEYS = ("model", "output", "data", "calibration_data")


@dataclass
class TuneSetup:
    recipe_path: Path
    written: dict  # the recipe document as written (relative paths), search block included
    base: dict  # the same with absolute paths, objective devices added, no search block
    recipe: Recipe
    space: SearchSpace
    objectives: list[Objective]
    out: Path
    cache_dir: Path
    storage: str
    study_name: str
    measure: bool = False

    def trial_doc(self, params: dict | None) -> dict:
        """The recipe document of a trial (params None: the recipe as written, the baseline)."""
        return copy.deepcopy(self.base) if params is None else self.space.apply(self.base, params)


def prepare(recipe_path: Path, out: Path, cache_dir: Path | None = None, storage: str | None = None,
            measure: bool = False, note: Callable[[str], None] = lambda message: None) -> TuneSetup:
    """Read and validate the recipe and its search block (UserError names the file and key)."""
    recipe_path = Path(recipe_path)
    written = read_yaml(recipe_path)
    if not isinstance(written, dict):
        raise UserError(f"{recipe_path}: a recipe is a mapping with model:, passes: and search:")
    where = str(recipe_path)
    recipe = parse_recipe({k: v for k, v in written.items() if k != "search"}, recipe_path)
    space = parse_search(written, where)
    devices = list(recipe.devices)
    objectives = parse_objectives(space.objectives, recipe, where, devices, note)
    for objective in objectives:
        if objective.key in ("est_latency_ms", "est_energy_mj") and objective.device is None and not devices:
            raise UserError(f"{where}: search.objectives: {objective.name} needs a device: add `device:` to the "
                            f"recipe or write {objective.name}@DEVICE")
        if objective.device is not None and objective.device not in devices:
            devices.append(objective.device)  # profiled on every trial; checks still use the first device
    measure = measure or any(o.key == "measured_latency_ms" for o in objectives)
    base = {k: v for k, v in written.items() if k != "search"}
    for key in PATH_KEYS:
        value = getattr(recipe, "calibration_data" if key == "calibration_data" else key, None)
        if value is not None:
            base[key] = str(Path(value).resolve())
    if devices:
        base["device"] = devices if len(devices) > 1 else devices[0]
    content = json.dumps({"recipe": written, "objectives": [o.name for o in objectives], "measure": measure},
                         sort_keys=True, default=str)
    name = f"{recipe_path.stem}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"
    out = Path(out)
    return TuneSetup(recipe_path=recipe_path, written=written, base=base, recipe=recipe, space=space,
                     objectives=objectives, out=out, cache_dir=Path(cache_dir) if cache_dir else out / "cache",
                     storage=storage or f"sqlite:///{(out / 'study.db').resolve()}", study_name=name,
                     measure=measure)


def _constraints(trial) -> list[float]:
    return trial.user_attrs.get("constraints", [])


def make_sampler(kind: str, seed: int | None, with_constraints: bool):
    import optuna

    constraints = _constraints if with_constraints else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate / group / constraints are marked experimental
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=16, constraints_func=constraints)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True, group=True,
                                          constant_liar=True, constraints_func=constraints)


def open_study(setup: TuneSetup, seed: int | None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup.out.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(storage=setup.storage, study_name=setup.study_name,
                                        sampler=optuna.samplers.RandomSampler(),
                                        directions=[o.direction for o in setup.objectives], load_if_exists=True)
    except Exception as exc:  # a bad --storage URL or an unreadable database
        raise UserError(f"--storage {setup.storage}: cannot open the study ({' '.join(str(exc).split())[:200]})") from None
    # A resumed study's sampler starts from a seed moved by the trials it holds: the same seed again would
    # replay the first run's random start-up trials.
    if seed is not None:
        seed += len(study.trials)
    study.sampler = make_sampler(setup.space.sampler, seed, bool(setup.recipe.checks))
    return study


def finished(study) -> list:
    """Trials with a result (complete, infeasible or failed); interrupted ones have none."""
    return [t for t in study.get_trials(deepcopy=False) if RESULT_ATTR in t.user_attrs]


@dataclass
class LoopStats:
    ran: int = 0
    hits: int = 0
    misses: int = 0
    interrupted: bool = False
    baseline: dict | None = None
    results: list = field(default_factory=list)


def _tell(study, trial, result: dict, setup: TuneSetup) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(RESULT_ATTR, {k: v for k, v in result.items() if k != "constraints"})
    trial.set_user_attr("constraints", result["constraints"])
    if result["values"] is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, [result["values"][o.name] for o in setup.objectives])


def _result(future) -> dict:
    """The trial's result; a worker that died (or a Ray task error) makes it failed, not the tune."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"state": "failed", "values": None, "checks": [], "constraints": [], "stages": 0,
                "error": f"the trial's worker failed ({type(exc).__name__}: {first})", "cached_stages": 0,
                "cache": {"hits": 0, "misses": 0}, "seconds": 0.0}


def run_loop(setup: TuneSetup, study, executor, trials: int, timeout: float | None,
             on_result: Callable[[int, dict], None] = lambda number, result: None) -> LoopStats:
    """Run trials until the study holds `trials` finished ones (or `timeout` seconds passed)."""
    from optuna.trial import TrialState

    stats = LoopStats()
    started = time.monotonic()
    args = (str(setup.recipe_path), setup.objectives, str(setup.cache_dir), setup.measure)
    baseline = study.user_attrs.get("baseline")
    baseline_future = None if baseline is not None else executor.submit(setup.trial_doc(None), *args)
    done = len(finished(study))
    pending: deque = deque()
    try:
        while True:
            while (len(pending) < executor.window and done + len(pending) < trials
                   and (timeout is None or time.monotonic() - started < timeout)):
                trial = study.ask()
                params = setup.space.suggest(trial)
                pending.append((trial, executor.submit(setup.trial_doc(params), *args)))
            if not pending:
                break
            trial, future = pending.popleft()
            result = _result(future)
            _tell(study, trial, result, setup)
            done += 1
            stats.ran += 1
            stats.hits += result["cache"]["hits"]
            stats.misses += result["cache"]["misses"]
            on_result(trial.number, result)
        if baseline_future is not None:
            result = _result(baseline_future)
            stats.hits += result["cache"]["hits"]
            stats.misses += result["cache"]["misses"]
            baseline = {"values": result["values"],
                        "state": result["state"], "error": result["error"]}
            study.set_user_attr("baseline", baseline)
    except KeyboardInterrupt:
        stats.interrupted = True
        executor.shutdown(cancel=True)
        for trial, _ in pending:  # no result: left out of the outputs; a rerun asks new trials
            study.tell(trial, state=TrialState.FAIL)
    stats.baseline = baseline
    return stats


def seconds_since(start: float) -> float:
    return round(time.monotonic() - start, 3)

