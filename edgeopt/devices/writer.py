"""Device YAML out: a profile as a mapping (every figure with its source), fitted figures marked C.

`device_data` serialises a whole Device (what `edgeopt calibrate DEVICE --measurements` writes: a file
that stands alone); `apply_fit` puts a fit's figures, rows and validation into such a mapping (or into
a built-in variant's few keys, which keep their `base:` chip file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from edgeopt.devices.fitting import EFF, FitResult
from edgeopt.devices.model import EFFICIENCY_CAP, Device, Figure


def figure_data(fig: Figure):
    out = {k: v for k, v in (("value", fig.value), ("mark", fig.mark), ("prior", fig.prior),
                             ("source", fig.source), ("note", fig.note), ("assume", fig.assume))
           if v is not None}
    return out or None


def device_data(device: Device) -> dict:
    """Every field of `device` as a device YAML mapping (loader.parse_device reads it back)."""
    data: dict = {
        "name": device.name, "title": device.title, "kind": device.kind,
        "device": device.device_key, "runtime": device.runtime, "threads": device.threads,
        "notes": device.notes, "precisions": list(device.precisions), "default_precision": device.default_precision,
        "peak_gops": {p: figure_data(f) for p, f in device.peak_gops.items()},
        "dram_gbps": figure_data(device.dram_gbps),
        "onchip_bytes": figure_data(device.onchip_bytes), "onchip_gbps": figure_data(device.onchip_gbps),
        "power_w": figure_data(device.power_w), "alignment": dict(device.alignment),
        "efficiency": {c: figure_data(f) for c, f in device.efficiency.items() if not f.assumed},
        "fuses": list(device.fuses), "sparse_weights": figure_data(device.sparse_weights),
        "layer_overhead_us": figure_data(device.layer_overhead_us),
        "run_overhead_us": figure_data(device.run_overhead_us),
        "weight_cache": device.weight_cache, "activations_onchip": device.activations_onchip,
    }
    if not device.reduction_lanes:
        data["reduction_lanes"] = False
    if device.host_link_gbps != Figure():
        data["host_link_gbps"] = figure_data(device.host_link_gbps)
    if device.depth_half != Figure():
        data["depth_half"] = figure_data(device.depth_half)
    if device.cores != Figure():
        data["cores"] = figure_data(device.cores)
    energy = {"mac": {p: figure_data(f) for p, f in device.energy_pj_per_mac.items()}}
    for key, fig in (("dram_byte", device.energy_pj_per_dram_byte), ("sram_byte", device.energy_pj_per_sram_byte)):
        if fig != Figure():
            energy[key] = figure_data(fig)
    data["energy_pj"] = energy
    wd = device.weight_decode
    if wd.mode != "native":
        data["weight_decode"] = {"mode": wd.mode, "runtime_ops": list(wd.runtime_ops), "slowdown": dict(wd.slowdown),
                                 "layer_us": wd.layer_us, **({"source": wd.source} if wd.source else {}),
                                 **({"mark": wd.mark} if wd.mark else {})}
    if device.class_overhead_us:
        data["class_overhead_us"] = dict(device.class_overhead_us)
    return {k: v for k, v in data.items() if v is not None}


def apply_fit(data: dict, result: FitResult, validation: dict | None, what: str) -> dict:
    """`data` with the fitted figures (mark C, their prior and the rows' description) and the fit block."""
    out = dict(data)
    source = (f"fitted to {what}: {len(result.rows)} rows, in-sample median error {result.stats['median_error']:.0%}"
              if result.rows else f"from {what}")
    efficiency = dict(out.get("efficiency") or {})
    for key in result.free:
        value, prior = result.values[key], result.priors[key]
        fig = {"value": round(min(value, EFFICIENCY_CAP.get(key.split(".", 1)[1], 1.0)) if key in EFF else value, 6),
               "mark": "C",
               "prior": round(prior, 6), "source": source}
        if key in EFF:
            efficiency[key.split(".", 1)[1]] = fig
        else:
            out[key] = fig
    out["efficiency"] = efficiency
    out["fit"] = {
        "what": what,
        "free": list(result.free),
        "error": result.stats,
        "rows": [{"model": r.label(), "measured_ms": r.latency_ms, "predicted_ms": round(p, 4),
                  **({"source": r.source} if r.source else {}), **({"line": r.line} if r.line else {})}
                 for r, p in zip(result.rows, result.predicted_ms)],
    }
    if validation is not None:
        validation = dict(validation)
        for row, held in zip(out["fit"]["rows"], validation.pop("loao_predicted_ms", [])):
            row["loao_ms"] = held  # predicted by a fit that never saw this row's architecture
        out["validation"] = validation
    return out


def write_yaml(data: dict, path: Path | str) -> None:
    """Atomic write: a temporary file in the same folder, renamed over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(data, fh, sort_keys=False, width=120, allow_unicode=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
