"""What a trial is scored on: figures of the final stage of its run document, each with a direction.

    est_latency_ms@DEVICE, est_energy_mj@DEVICE   the profiler's estimates (no @: the recipe's first device)
    weight_bytes, macs, params_count, peak_activation_bytes
    accuracy (needs `data:` with labels), cosine, top1_agreement, max_abs_error (against the input model;
        of the worst output, or the recipe's fidelity.output: verify/fidelity.py)
    measured_latency_ms                            onnxruntime on this machine (turns measurement on)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.devices import load_device
from edgeopt.errors import UserError
from edgeopt.recipe.values import did_you_mean

PER_DEVICE = {"est_latency_ms": "minimize", "est_energy_mj": "minimize"}
COUNTS = {"weight_bytes": "minimize", "macs": "minimize", "params_count": "minimize",
          "peak_activation_bytes": "minimize", "measured_latency_ms": "minimize"}
FIDELITY = {"accuracy": "maximize", "cosine": "maximize", "top1_agreement": "maximize", "max_abs_error": "minimize"}
NAMES = [*PER_DEVICE, *COUNTS, *FIDELITY]


@dataclass(frozen=True)
class Objective:
    name: str  # as written: est_latency_ms@myriadx
    key: str  # est_latency_ms
    direction: str  # minimize | maximize
    device: str | None = None  # the device spec after @ (added to the trial's devices)
    device_name: str | None = None  # the profile's name, the key of the stage's `devices`

    def value(self, doc: dict) -> float | None:
        final = doc["stages"][-1]
        if self.key in PER_DEVICE:
            if self.device_name is None:
                return final.get(self.key)
            return ((final.get("devices") or {}).get(self.device_name) or {}).get(self.key)
        if self.key in COUNTS:
            return final.get(self.key)
        fidelity = final.get("fidelity") or {}
        if self.key == "accuracy":
            return fidelity.get("accuracy")
        return (fidelity.get("vs_input") or {}).get(self.key)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def parse_objective(text: str, where: str) -> Objective:
    key, _, device = str(text).partition("@")
    if key not in NAMES:
        raise UserError(f"{where}: search.objectives: unknown objective {key!r}{did_you_mean(key, NAMES)} "
                        f"(objectives: {', '.join(NAMES)}; est_latency_ms and est_energy_mj take @DEVICE)")
    if not device:
        return Objective(text, key, PER_DEVICE.get(key) or COUNTS.get(key) or FIDELITY[key])
    if key not in PER_DEVICE:
        raise UserError(f"{where}: search.objectives: {text!r}: only est_latency_ms and est_energy_mj take @DEVICE")
    try:
        profile = load_device(device)
    except UserError as exc:
        raise UserError(f"{where}: search.objectives: {text!r}: {exc}") from None
    return Objective(text, key, PER_DEVICE[key], device, profile.name)


def has_labels(data: Path | None) -> bool:
    if data is None or not data.exists():
        return False
    try:
        with np.load(data, allow_pickle=False) as npz:
            return "labels" in npz.files
    except Exception:  # an unreadable archive: the pipeline reports it with its own message
        return False


def parse_objectives(names: list[str], recipe, where: str, devices: list[str], note) -> list[Objective]:
    """Objectives from the search block, or est_latency_ms on the first device and accuracy. `accuracy`
    without labelled data becomes `cosine` against the input model, and `note` says so."""
    if not names:
        names = [f"est_latency_ms@{devices[0]}" if devices else "macs", "accuracy"]
    objectives = []
    for text in names:
        objective = parse_objective(text, where)
        if objective.key == "accuracy" and not has_labels(recipe.data):
            note(f"objective accuracy needs `data:` with `labels` ({'no data' if recipe.data is None else recipe.data.name + ' has none'}); "
                 "tuning cosine against the input model instead")
            objective = parse_objective("cosine", where)
        if any(o.name == objective.name for o in objectives):
            raise UserError(f"{where}: search.objectives: {objective.name!r} is listed twice")
        objectives.append(objective)
    return objectives
