"""Recipe checks: build gates on the final stage (DESIGN.md, CONTRACT: recipe `checks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeopt.verify.fidelity import worst


@dataclass(frozen=True)
class CheckSpec:
    name: str
    help: str
    value: Callable[[dict, dict], float | None]  # (final stage, input stage) -> measured value
    upper: bool  # True: value must be <= limit; False: value must be >= limit
    output: Callable[[dict, dict], str | None] | None = None  # which graph output the value is of (fidelity)


def _stage_key(key: str):
    return lambda final, first: final.get(key)


def _focus(stage: dict) -> str | None:
    return ((stage.get("fidelity") or {}).get("on") or {}).get("output")


def _fidelity_vs_input(key: str):
    """The stage's figure against the input model: already the worst over the outputs looked at."""
    return lambda final, first: ((final.get("fidelity") or {}).get("vs_input") or {}).get(key)


def _worst_vs_input(key: str):
    """The output that figure is of."""
    def output(final: dict, first: dict) -> str | None:
        per = ((final.get("fidelity") or {}).get("vs_input") or {}).get("outputs") or {}
        return worst(per, key, _focus(final))
    return output


def _drops(final: dict, first: dict) -> dict[str, float]:
    """Accuracy drop per output where both stages have an accuracy (the outputs looked at)."""
    before = (first.get("fidelity") or {}).get("outputs") or {}
    after = (final.get("fidelity") or {}).get("outputs") or {}
    focus = _focus(final)
    return {n: before[n]["accuracy"] - f["accuracy"] for n, f in after.items()
            if (focus is None or n == focus) and f.get("accuracy") is not None
            and (before.get(n) or {}).get("accuracy") is not None}


def _accuracy_drop(final: dict, first: dict) -> float | None:
    """The largest accuracy drop over the outputs it applies to (a document without per-output figures:
    the stage accuracies' difference)."""
    drops = _drops(final, first)
    if drops:
        return max(drops.values())
    before = (first.get("fidelity") or {}).get("accuracy")
    after = (final.get("fidelity") or {}).get("accuracy")
    if before is None or after is None:
        return None
    return before - after


def _accuracy_output(final: dict, first: dict) -> str | None:
    drops = _drops(final, first)
    return max(drops, key=lambda n: drops[n]) if drops else None


CHECKS: dict[str, CheckSpec] = {c.name: c for c in [
    CheckSpec("max_est_latency_ms", "estimated latency on the first device, ms", _stage_key("est_latency_ms"), True),
    CheckSpec("max_est_energy_mj", "estimated energy per inference on the first device, mJ", _stage_key("est_energy_mj"), True),
    CheckSpec("max_weight_bytes", "bytes of stored weights", _stage_key("weight_bytes"), True),
    CheckSpec("max_peak_activation_bytes", "peak bytes of live activations", _stage_key("peak_activation_bytes"), True),
    CheckSpec("max_measured_latency_ms", "onnxruntime latency measured on this machine, ms", _stage_key("measured_latency_ms"), True),
    CheckSpec("min_cosine", "cosine similarity against the input model of the worst output (or the recipe's "
              "fidelity.output)", _fidelity_vs_input("cosine"), False, _worst_vs_input("cosine")),
    CheckSpec("min_top1_agreement", "top-1 agreement with the input model of the worst output (per position with "
              "fidelity.metric top1)", _fidelity_vs_input("top1_agreement"), False, _worst_vs_input("top1_agreement")),
    CheckSpec("max_accuracy_drop", "accuracy drop against the input model (fraction: 0.01 = 1 point)", _accuracy_drop, True,
              _accuracy_output),
]}


def evaluate_checks(limits: dict[str, float], stages: list[dict]) -> list[dict]:
    """One result per check: {"name", "limit", "value", "ok"}, and for a fidelity check of a model with
    several outputs, "output": the one the value is of. A value that cannot be known fails."""
    results = []
    several = len((stages[-1].get("fidelity") or {}).get("outputs") or {}) > 1
    for name, limit in limits.items():
        spec = CHECKS[name]
        value = spec.value(stages[-1], stages[0])
        if value is None:
            ok = False
        else:
            ok = value <= limit if spec.upper else value >= limit
        result = {"name": name, "limit": limit, "value": value, "ok": ok}
        if spec.output is not None and several:
            result["output"] = spec.output(stages[-1], stages[0])
        results.append(result)
    return results


def describe_failure(result: dict) -> str:
    spec = CHECKS[result["name"]]
    if result["value"] is None:
        hint = "; it needs `data:` with labels" if result["name"] == "max_accuracy_drop" else ""
        return f"check {result['name']} failed: {spec.help} could not be measured (limit {result['limit']}){hint}"
    op = "<=" if spec.upper else ">="
    on = f" on output {result['output']!r}" if result.get("output") else ""
    return (f"check {result['name']} failed: {spec.help} is {result['value']:.6g}{on}, "
            f"limit {op} {result['limit']:g}")
