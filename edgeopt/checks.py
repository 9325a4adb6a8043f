"""Recipe checks: build gates on the final stage (DESIGN.md, CONTRACT: recipe `checks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class CheckSpec:
    name: str
    help: str
    value: Callable[[dict, dict], float | None]  # (final stage, input stage) -> measured value
    upper: bool  # True: value must be <= limit; False: value must be >= limit


def _stage_key(key: str):
    return lambda final, first: final.get(key)


def _fidelity_vs_input(key: str):
    return lambda final, first: ((final.get("fidelity") or {}).get("vs_input") or {}).get(key)


def _accuracy_drop(final: dict, first: dict) -> float | None:
    before = (first.get("fidelity") or {}).get("accuracy")
    after = (final.get("fidelity") or {}).get("accuracy")
    if before is None or after is None:
        return None
    return before - after


CHECKS: dict[str, CheckSpec] = {c.name: c for c in [
    CheckSpec("max_est_latency_ms", "estimated latency on the first device, ms", _stage_key("est_latency_ms"), True),
    CheckSpec("max_est_energy_mj", "estimated energy per inference on the first device, mJ", _stage_key("est_energy_mj"), True),
    CheckSpec("max_weight_bytes", "bytes of stored weights", _stage_key("weight_bytes"), True),
    CheckSpec("max_peak_activation_bytes", "peak bytes of live activations", _stage_key("peak_activation_bytes"), True),
    CheckSpec("max_measured_latency_ms", "onnxruntime latency measured on this machine, ms", _stage_key("measured_latency_ms"), True),
    CheckSpec("min_cosine", "cosine similarity of the outputs (or the recipe's fidelity.output) against the input model",
              _fidelity_vs_input("cosine"), False),
    CheckSpec("min_top1_agreement", "top-1 agreement with the input model (per position with fidelity.metric top1)",
              _fidelity_vs_input("top1_agreement"), False),
    CheckSpec("max_accuracy_drop", "accuracy drop against the input model (fraction: 0.01 = 1 point)", _accuracy_drop, True),
]}


def evaluate_checks(limits: dict[str, float], stages: list[dict]) -> list[dict]:
    """One result per check: {"name", "limit", "value", "ok"}. A value that cannot be known fails."""
    results = []
    for name, limit in limits.items():
        spec = CHECKS[name]
        value = spec.value(stages[-1], stages[0])
        if value is None:
            ok = False
        else:
            ok = value <= limit if spec.upper else value >= limit
        results.append({"name": name, "limit": limit, "value": value, "ok": ok})
    return results


def describe_failure(result: dict) -> str:
    spec = CHECKS[result["name"]]
    if result["value"] is None:
        hint = "; it needs `data:` with labels" if result["name"] == "max_accuracy_drop" else ""
        return f"check {result['name']} failed: {spec.help} could not be measured (limit {result['limit']}){hint}"
    op = "<=" if spec.upper else ">="
    return (f"check {result['name']} failed: {spec.help} is {result['value']:.6g}, "
            f"limit {op} {result['limit']:g}")
