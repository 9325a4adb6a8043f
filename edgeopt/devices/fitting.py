"""Fit a profile's free figures to measured latencies: least squares on log latency (scipy.optimize).

The profiler prices every layer at the profile's figures once (`terms`); a fitted figure only rescales
what it governs, so a candidate's latency is exact without profiling again:

    latency = sum_layers max(compute_i x e0[class_i] / e[class_i] x (d_i + h) / (d_i + h0), memory_i x bw0 / bw)
              + layers x layer_overhead + run_overhead + transfer x link0 / link

(d_i: the layer's reduction depth, h: the profile's depth_half; profile/shapeclass.py.) Free figures
are the per-class efficiencies, the depth at half efficiency, the off-chip bandwidth, the per-layer and
per-invoke overheads and the host link. Each has a prior, the figure before the fit (data sheet or inferred),
and a Gaussian penalty in log space pulls it there; class efficiencies are also tied to the conv
efficiency's move, so a class the rows say little about keeps its ratio to conv. That is what lets
five to ten measurements fit a profile without overfitting it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.devices.measurements import Measurement, model_path
from edgeopt.devices.model import EFFICIENCY_CAP, EFFICIENCY_CLASSES, Device, Figure
from edgeopt.errors import UserError

EFF = tuple(f"efficiency.{c}" for c in EFFICIENCY_CLASSES)
SCALAR = ("dram_gbps", "layer_overhead_us", "run_overhead_us", "host_link_gbps")
# prior width (log units) per figure: how far the rows may move it before the penalty bites
PRIOR_SIGMA = {"efficiency.conv": 1.5, "dram_gbps": 1.0, "layer_overhead_us": 1.5, "run_overhead_us": 2.0,
               "host_link_gbps": 1.0}
TIE_SIGMA = 0.5  # a class efficiency's move relative to conv's
DEPTH_SIGMA = 1.0  # depth_half's move (log units)
DATA_SIGMA = 0.1  # log-latency scale of one row (~10 %)
DEFAULT_OVERHEAD_US = {"layer_overhead_us": 10.0, "run_overhead_us": 100.0}


@dataclass
class Terms:
    """One model's layer costs at the prior profile: what the fitted figures rescale."""

    compute_s: np.ndarray
    memory_s: np.ndarray
    cls: np.ndarray  # index into EFFICIENCY_CLASSES
    depth: np.ndarray  # reduction depth per layer (0: not a GEMM-like layer)
    overhead_layers: float  # executed layers (x runs): each pays layer_overhead
    fixed_s: float  # class overheads and decode time, not fitted
    transfer_s: float
    est_ms: float  # the profiler's total at the prior figures (consistency check)


@dataclass
class FitResult:
    device: Device
    values: dict[str, float]
    priors: dict[str, float]
    rows: list[Measurement]
    predicted_ms: list[float]
    free: list[str]
    stats: dict = field(default_factory=dict)


def prior_values(device: Device) -> dict[str, float]:
    """Every fittable figure's current value (a missing class efficiency: conv's; a missing overhead:
    a generic default)."""
    out = {}
    for key, cls in zip(EFF, EFFICIENCY_CLASSES):
        out[key] = device.efficiency_for(cls)
    out["dram_gbps"] = float(device.dram_gbps.effective)
    for key in ("layer_overhead_us", "run_overhead_us"):
        value = getattr(device, key).effective
        out[key] = float(value) if value else DEFAULT_OVERHEAD_US[key]
    link = device.host_link_gbps.effective
    if link:
        out["host_link_gbps"] = float(link)
    if device.depth_half.effective:
        out["depth_half"] = float(device.depth_half.effective)
    return out


def with_figures(device: Device, values: dict[str, float], source: str | None = None,
                 priors: dict[str, float] | None = None) -> Device:
    """The device with `values` set (mark C when `source` is given)."""
    def fig(key, value):
        if source is None:
            return Figure(value, source="set for fitting", mark="I")
        return Figure(round(value, 6), source=source, mark="C",
                      prior=None if priors is None else round(priors[key], 6))

    efficiency = dict(device.efficiency)
    for key, cls in zip(EFF, EFFICIENCY_CLASSES):
        if key in values:
            efficiency[cls] = fig(key, min(values[key], EFFICIENCY_CAP.get(cls, 1.0)))
    changes = {k: fig(k, values[k]) for k in (*SCALAR, "depth_half") if k in values}
    return dataclasses.replace(device, efficiency=efficiency, **changes)


def terms_for(model, device: Device) -> Terms:
    """Profile `model` (a path or a ModelProto) on `device` and keep the layer terms."""
    import onnx

    from edgeopt.profile.profiler import profile_model

    proto = onnx.load(str(model), load_external_data=True) if isinstance(model, (str, Path)) else model
    prof = profile_model(proto, device)
    comp, mem, cls, depth = [], [], [], []
    n_layers, fixed = 0.0, 0.0
    index = {c: i for i, c in enumerate(EFFICIENCY_CLASSES)}
    for layer in prof.layers:
        if layer.get("bound") not in ("compute", "memory"):
            continue
        runs = layer.get("runs", 1)
        c = layer.get("cost_class") or layer.get("op_class")
        c = c if c in index else "elementwise"
        comp.append((layer.get("compute_ms") or 0.0) * 1e-3)
        mem.append((layer.get("memory_ms") or 0.0) * 1e-3)
        cls.append(index[c])
        depth.append(layer.get("reduction_depth") or 0)
        n_layers += runs
        # what max(compute, memory) does not explain: class overheads and decode time
        rest = (layer["est_latency_ms"] - max(layer.get("compute_ms") or 0, layer.get("memory_ms") or 0)) * 1e-3
        fixed += rest - runs * device.overhead_s
    total = prof.totals.get("est_latency_ms")
    if total is None:
        raise UserError(f"{getattr(model, 'name', model)}: the profile has no latency estimate (shapes unknown)")
    return Terms(np.array(comp), np.array(mem), np.array(cls, dtype=int), np.array(depth, dtype=float), n_layers,
                 max(fixed, 0.0),
                 prof.totals.get("est_transfer_ms", 0.0) * 1e-3, total)


def _cap(key: str) -> float:
    return EFFICIENCY_CAP.get(key.split(".", 1)[1], 1.0)


def predict_ms(terms: Terms, prior: dict[str, float], values: dict[str, float]) -> float:
    """Latency at `values` from terms priced at `prior` (the formula in the module docstring)."""
    e0 = np.array([prior[k] for k in EFF])
    e = np.array([min(values[k], _cap(k)) for k in EFF])
    compute = terms.compute_s * (e0 / e)[terms.cls]
    if "depth_half" in prior:
        d = terms.depth
        compute = compute * np.where(d > 0, (d + values["depth_half"]) / (d + prior["depth_half"]), 1.0)
    memory = terms.memory_s * (prior["dram_gbps"] / values["dram_gbps"])
    total = float(np.maximum(compute, memory).sum())
    total += terms.overhead_layers * values["layer_overhead_us"] * 1e-6 + terms.fixed_s
    total += values["run_overhead_us"] * 1e-6
    if "host_link_gbps" in prior:
        total += terms.transfer_s * prior["host_link_gbps"] / values["host_link_gbps"]
    return total * 1e3


class TermCache:
    """Layer terms per (profile, model), so leave-one-out refits never profile twice."""

    def __init__(self, models_dir: Path | str = "build/device_truth/onnx"):
        self.models_dir = Path(models_dir)
        self._cache: dict[tuple[str, str], Terms] = {}

    def get(self, device: Device, prior: dict[str, float], row: Measurement) -> Terms:
        path = model_path(row, self.models_dir)
        key = (device.name + repr(sorted(prior.items())), str(path))
        if key not in self._cache:
            self._cache[key] = terms_for(path, with_figures(device, prior))
        return self._cache[key]


def fit(device: Device, rows: list[Measurement], cache: TermCache | None = None,
        free: list[str] | None = None) -> FitResult:
    """Least squares on log latency of the free figures of `device` to `rows` (priors: its figures)."""
    if not rows:
        raise UserError(f"{device.name}: no measurements to fit")
    return fit_group([(device, rows)], cache, free)[0]


def fit_group(members: list[tuple[Device, list[Measurement]]], cache: TermCache | None = None,
              free: list[str] | None = None, shared_prior: dict[str, float] | None = None) -> list[FitResult]:
    """One least-squares fit of several profiles of one runtime family.

    What a runtime's kernels do is shared: each class efficiency is conv's times a ratio common to the
    group (Winograd 3x3, the depthwise kernel, the GEMM path are the same code on every board). What
    the board gives is each profile's own: its conv efficiency, bandwidth, overheads and host link.
    A profile without rows keeps its own figures and takes the group's ratios.

    shared_prior: where the shared figures' prior comes from when the group's own rows say little (log
    class ratios to conv by efficiency key, log depth_half): what well-measured runtimes on the same kind
    of chip do (`shared_figures`); default: the members' own figures.
    """
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    cache = cache or TermCache()
    ratio_keys = [k for k in EFF if k != "efficiency.conv" and (free is None or k in free)]
    priors = [prior_values(d) for d, _ in members]
    # the depth at half efficiency is the kernel code's too: one per group, when every member has one
    shared_depth = all("depth_half" in pr for pr in priors) and (free is None or "depth_half" in free)
    own_keys = [[k for k in ("efficiency.conv", *SCALAR) if k in pr and (free is None or k in free)]
                for pr in priors]
    # the ratios' prior: the members' own ratios, averaged in log space
    r0 = np.array([np.mean([math.log(pr[k] / pr["efficiency.conv"]) for pr in priors]) for k in ratio_keys]
                  + ([np.mean([math.log(pr["depth_half"]) for pr in priors])] if shared_depth else []))
    if shared_prior:
        for i, k in enumerate(ratio_keys + ["depth_half"] * shared_depth):
            if k in shared_prior:
                r0[i] = shared_prior[k]
    tie_sigma = np.array([TIE_SIGMA] * len(ratio_keys) + [DEPTH_SIGMA] * shared_depth)
    n_shared = len(r0)
    offsets, n = [], n_shared
    for keys in own_keys:
        offsets.append(n)
        n += len(keys)
    x0 = np.concatenate([r0] + [np.log([pr[k] for k in keys]) for pr, keys in zip(priors, own_keys)])
    terms = [[cache.get(d, pr, r) for r in rows] for (d, rows), pr in zip(members, priors)]
    measured = [np.log([r.latency_ms for r in rows]) for _, rows in members]

    def values_of(x, m):
        pr, keys = priors[m], own_keys[m]
        values = dict(pr)
        values.update({k: math.exp(v) for k, v in zip(keys, x[offsets[m]:offsets[m] + len(keys)])})
        conv = values["efficiency.conv"]
        for i, k in enumerate(ratio_keys):
            values[k] = conv * math.exp(x[i])
        if shared_depth:
            values["depth_half"] = math.exp(x[len(ratio_keys)])
        return values

    def residuals(x):
        res = []
        for m in range(len(members)):
            values = values_of(x, m)
            if terms[m]:
                pred = np.log([predict_ms(t, priors[m], values) for t in terms[m]])
                res.extend((pred - measured[m]) / DATA_SIGMA)
            for j, key in enumerate(own_keys[m]):
                res.append((x[offsets[m] + j] - x0[offsets[m] + j]) / PRIOR_SIGMA.get(key, 1.0))
        res.extend((x[:n_shared] - r0) / tie_sigma)
        return np.array(res)

    rows_n = sum(len(t) + len(k) for t, k in zip(terms, own_keys)) + n_shared
    sparsity = lil_matrix((rows_n, len(x0)), dtype=int)
    i = 0
    for m in range(len(members)):
        block = list(range(offsets[m], offsets[m] + len(own_keys[m])))
        for _ in terms[m]:
            sparsity[i, :n_shared] = 1
            sparsity[i, block] = 1
            i += 1
        for j in block:
            sparsity[i, j] = 1
            i += 1
    for j in range(n_shared):
        sparsity[i, j] = 1
        i += 1
    upper = np.full(len(x0), np.inf)
    for m, keys in enumerate(own_keys):
        if "efficiency.conv" in keys:
            upper[offsets[m] + keys.index("efficiency.conv")] = 0.0
    start = np.minimum(x0, upper - 1e-9)
    sol = least_squares(residuals, start, bounds=(np.full(len(x0), -np.inf), upper), loss="soft_l1",
                        f_scale=2.0, jac_sparsity=sparsity)
    results = []
    for m, (device, rows) in enumerate(members):
        values = values_of(sol.x, m)
        for k in EFF:  # what the cost model can use: each class capped at its ceiling
            values[k] = min(values[k], _cap(k))
        predicted = [predict_ms(t, priors[m], values) for t in terms[m]]
        results.append(FitResult(device=device, values=values, priors=priors[m], rows=list(rows),
                                 predicted_ms=predicted,
                                 free=own_keys[m] + ratio_keys + ["depth_half"] * shared_depth,
                                 stats=error_stats([r.latency_ms for r in rows], predicted)))
    return results


def shared_figures(results: list[FitResult]) -> dict[str, float]:
    """The shared figures of fitted profiles in log space, averaged: each class efficiency's ratio to conv
    (by efficiency key) and depth_half. What `fit_group(shared_prior=...)` takes."""
    out: dict[str, float] = {}
    fitted = [r for r in results if r is not None and r.rows]
    for key in [k for k in EFF if k != "efficiency.conv"] + ["depth_half"]:
        logs = [math.log(r.values[key] / (r.values["efficiency.conv"] if key != "depth_half" else 1.0))
                for r in fitted if key in r.values and key in r.free]
        if logs:
            out[key] = float(np.mean(logs))
    return out


def error_stats(measured: list[float], predicted: list[float]) -> dict:
    """How far predictions land: within ±25 % share, median and worst relative error, worst ratio."""
    if not measured:
        return {"rows": 0}
    rel = [abs(p - m) / m for p, m in zip(predicted, measured)]
    ratios = [p / m for p, m in zip(predicted, measured)]
    worst = max(range(len(ratios)), key=lambda i: abs(math.log(ratios[i])))
    return {
        "rows": len(measured),
        "within_25": round(sum(1 for r in rel if r <= 0.25) / len(rel), 4),
        "median_error": round(float(np.median(rel)), 4),
        "worst_error": round(max(rel), 4),
        "worst_ratio": round(ratios[worst], 4),
        "rms_log_error": round(float(np.sqrt(np.mean(np.log(ratios) ** 2))), 4),
    }
