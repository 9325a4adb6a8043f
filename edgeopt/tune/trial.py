"""One trial: a recipe document -> the verified pipeline -> a plain result dict (picklable, JSON-able).

A failed check makes the trial infeasible (its figures and the failing checks are kept); a pass that fails
verification, or any other error, makes it failed with the message. The search goes on either way.
The output model goes to a temporary folder and is deleted unless `output` is given.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

from edgeopt.errors import CheckFailed, UserError, VerificationError
from edgeopt.pipeline import RunOptions, run_recipe
from edgeopt.recipe.load import parse_recipe
from edgeopt.stage_cache import StageCache


def _violation(check: dict) -> float:
    """Optuna's constraint value: <= 0 holds; > 0 is the miss relative to the limit."""
    if check["ok"]:
        return 0.0
    if check["value"] is None:
        return 1.0
    return max(abs(check["value"] - check["limit"]) / max(abs(check["limit"]), 1e-12), 1e-9)


def run_trial(doc: dict, recipe_path: str, objectives: list, cache_dir: str | None, measure: bool = False,
              output: str | None = None) -> dict:
    """Run one trial's recipe document (paths resolved against `recipe_path`) and score it."""
    started = time.perf_counter()
    cache = StageCache(cache_dir) if cache_dir else None
    result = {"state": "failed", "values": None, "checks": [], "constraints": [], "error": None,
              "cached_stages": 0, "stages": 0}
    run_doc = None
    with tempfile.TemporaryDirectory(prefix="edgeopt-trial-") as tmp:
        try:
            recipe = parse_recipe(copy.deepcopy(doc), Path(recipe_path))
            options = RunOptions(output=Path(output) if output else Path(tmp) / "model.onnx",
                                 measure=measure, cache=cache)
            run_doc = run_recipe(recipe, options)
            result["state"] = "complete"
        except CheckFailed as exc:
            run_doc = exc.doc
            result["state"] = "infeasible" if run_doc is not None else "failed"
            result["error"] = str(exc).removesuffix("; nothing was written")
        except (VerificationError, UserError) as exc:
            result["error"] = str(exc)
        except Exception as exc:  # a bug in a pass or the profiler: record it, let the search go on
            if os.environ.get("EDGEOPT_DEBUG"):
                raise
            result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if run_doc is not None:
        values = {o.name: o.value(run_doc) for o in objectives}
        missing = [name for name, v in values.items() if v is None]
        if missing and result["state"] == "complete":
            result["state"] = "failed"
            result["error"] = f"objective {missing[0]} could not be measured on this trial"
        result["values"] = None if missing else values
        result["checks"] = run_doc["checks"]
        result["constraints"] = [_violation(c) for c in run_doc["checks"]]
        stages = run_doc["stages"][1:]
        result["stages"] = len(stages)
        result["cached_stages"] = sum(1 for s in stages if s.get("cached"))
    result["cache"] = {"hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0}
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
