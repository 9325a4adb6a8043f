"""How far a profile can be trusted: its error on measured rows, in sample and leave-one-architecture-out.

Leave-one-architecture-out (LOAO) fits the profile without every row of one architecture and
predicts those rows: the honest proxy for a model the fit has never seen. The band a profile carries
into `profile` and the run table is its LOAO error (in-sample when there is only one architecture).
"""

from __future__ import annotations

import math

import numpy as np

from edgeopt.devices.fitting import FitResult, TermCache, error_stats, fit, fit_group, predict_ms
from edgeopt.devices.measurements import Measurement
from edgeopt.devices.model import Device


def leave_one_arch_out(device: Device, rows: list[Measurement], cache: TermCache,
                       free: list[str] | None = None) -> list[float | None]:
    """Predicted ms of each row by a fit that never saw its architecture (None: nothing left to fit)."""
    predicted: list[float | None] = [None] * len(rows)
    for key in sorted({r.key for r in rows}):
        train = [r for r in rows if r.key != key]
        held = [i for i, r in enumerate(rows) if r.key == key]
        if not train:
            continue
        result = fit(device, train, cache, free)
        for i in held:
            predicted[i] = predict_ms(cache.get(device, result.priors, rows[i]), result.priors, result.values)
    return predicted


def leave_one_arch_out_group(members: list[tuple[Device, list[Measurement]]], cache: TermCache,
                             shared_prior=None, fits: dict | None = None) -> list[list[float | None]]:
    """LOAO for a group fit: each architecture leaves every member's rows, the group is refitted.

    shared_prior: fit_group's, or a callable arch key -> the shared prior computed without that
    architecture (so nothing of it reaches its prediction). fits: filled with arch key -> the
    refitted results."""
    predicted = [[None] * len(rows) for _, rows in members]
    keys = sorted({r.key for _, rows in members for r in rows})
    for key in keys:
        train = [(d, [r for r in rows if r.key != key]) for d, rows in members]
        if not any(rows for _, rows in train):
            continue
        prior = shared_prior(key) if callable(shared_prior) else shared_prior
        results = fit_group(train, cache, shared_prior=prior)
        if fits is not None:
            fits[key] = results
        for m, (device, rows) in enumerate(members):
            if not train[m][1]:
                continue  # the member's only architecture: nothing of its own left to fit on
            for i, r in enumerate(rows):
                if r.key == key:
                    res = results[m]
                    predicted[m][i] = predict_ms(cache.get(device, res.priors, r), res.priors, res.values)
    return predicted


def validate_group(members: list[tuple[Device, list[Measurement]]], cache: TermCache,
                   results: list[FitResult], shared_prior=None, fits: dict | None = None) -> list[dict]:
    """The validation block of each member of a group fit (arguments: leave_one_arch_out_group's)."""
    loao = leave_one_arch_out_group(members, cache, shared_prior, fits)
    return [_block(rows, result, held) for (_, rows), result, held in zip(members, results, loao)]


def _block(rows: list[Measurement], result: FitResult, loao: list[float | None]) -> dict:
    kept = [(r.latency_ms, p) for r, p in zip(rows, loao) if p is not None]
    out = {
        "rows": len(rows),
        "archs": sorted({r.key for r in rows}),
        "loao_predicted_ms": [None if p is None else round(p, 4) for p in loao],
        "in_sample": result.stats,
        "loao": error_stats([m for m, _ in kept], [p for _, p in kept]) if kept else {"rows": 0},
    }
    if kept:
        good_rows = [r for r, p in zip(rows, loao) if p is not None]
        meas, pred = per_arch(good_rows, [p for p in loao if p is not None])
        out["loao"]["kendall_tau"] = kendall_tau(meas, pred)
    return out


def kendall_tau(measured: list[float], predicted: list[float]) -> float | None:
    """Rank agreement of architectures by latency (per-architecture medians), None under 3 of them."""
    from scipy.stats import kendalltau

    if len(measured) < 3:
        return None
    tau = kendalltau(measured, predicted).statistic
    return None if tau is None or math.isnan(tau) else round(float(tau), 4)


def per_arch(rows: list[Measurement], predicted: list[float]) -> tuple[list[float], list[float]]:
    """Median measured and predicted ms per architecture@resolution, for the ranking."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.label(), []).append(i)
    meas = [float(np.median([rows[i].latency_ms for i in idx])) for idx in groups.values()]
    pred = [float(np.median([predicted[i] for i in idx])) for idx in groups.values()]
    return meas, pred


def validate(device: Device, rows: list[Measurement], cache: TermCache, result: FitResult | None = None,
             free: list[str] | None = None) -> dict:
    """The validation block of a fitted profile: in sample and LOAO error, ranking, the archs used."""
    result = result or fit(device, rows, cache, free)
    return _block(rows, result, leave_one_arch_out(device, rows, cache, free))


def band(device: Device) -> dict:
    """What `profile` says about how far the estimate can be trusted on this profile."""
    v = device.validation or {}
    loao = v.get("loao") or {}
    if not v or not v.get("rows"):
        return {"validated": False, "rows": 0,
                "note": "no published measurement behind this profile: the estimate is unvalidated"}
    basis = "leave-one-architecture-out" if loao.get("rows") else "in sample"
    stats = loao if loao.get("rows") else v.get("in_sample", {})
    return {"validated": True, "rows": v["rows"], "basis": basis,
            "median_error": stats.get("median_error"), "worst_error": stats.get("worst_error"),
            "within_25": stats.get("within_25")}


def band_text(b: dict) -> str:
    """One line for a table footer."""
    if not b.get("validated"):
        return "unvalidated: no published measurement behind this profile"
    return (f"{b['within_25']:.0%} of {b['rows']} published rows within ±25 %, median error "
            f"{b['median_error']:.0%} ({b['basis']})")
