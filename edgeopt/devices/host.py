"""The host profile's overlay: the figures `edgeopt calibrate host` measured on this machine."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from edgeopt.devices.model import EFFICIENCY_CAP, EFFICIENCY_CLASSES, OP_CLASSES, Device, Figure
from edgeopt.errors import UserError


def cache_dir() -> Path:
    """The user cache folder: $EDGEOPT_CACHE_DIR, else $XDG_CACHE_HOME/edgeopt, else ~/.cache/edgeopt."""
    if os.environ.get("EDGEOPT_CACHE_DIR"):
        return Path(os.environ["EDGEOPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeopt"


def host_calibration_path() -> Path:
    return cache_dir() / "host.yaml"


def calibration_warning(device: Device) -> str | None:
    """The stderr line to show when the host profile runs on its uncalibrated defaults, else None."""
    if device.name != "host" or device.calibrated:
        return None
    return ("the host profile is not calibrated (defaults in use); run `edgeopt calibrate host` "
            "for estimates fitted to this machine")


# -- host calibration overlay ---------------------------------------------------------------

def apply_host_calibration(device: Device, path: Path | None = None) -> Device:
    """Overlay the calibration stored by `edgeopt calibrate host`, when present and for this CPU."""
    from edgeopt.devices.hostinfo import cpu_signature

    path = path or host_calibration_path()
    if not path.exists():
        return device
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError):
        raise UserError(f"{path}: host calibration file is unreadable; delete it and run "
                        "`edgeopt calibrate host` again") from None
    if not isinstance(data, dict) or data.get("cpu") != cpu_signature():
        return device  # calibrated on another machine: not used
    source = f"calibrated on this machine ({data.get('date', '?')}, onnxruntime {data.get('onnxruntime', '?')})"
    efficiency = dict(device.efficiency)
    for cls, value in (data.get("efficiency") or {}).items():
        if cls in EFFICIENCY_CLASSES and isinstance(value, (int, float)) and value > 0:
            efficiency[cls] = Figure(min(float(value), EFFICIENCY_CAP.get(cls, 1.0)), source=source, mark="C")
    dram = device.dram_gbps
    if isinstance(data.get("dram_gbps"), (int, float)) and data["dram_gbps"] > 0:
        dram = Figure(float(data["dram_gbps"]), source=source, mark="C")
    peak = dict(device.peak_gops)
    measured_peak = data.get("peak_gops_fp32")
    if isinstance(measured_peak, (int, float)) and measured_peak > 0:
        peak["fp32"] = Figure(float(measured_peak), mark="C",
                              source=source + ": best measured GEMM / conv throughput, above the static figure")
    fp32 = peak["fp32"].effective if peak.get("fp32") else None
    speedup = data.get("int8_speedup")
    if "int8" in peak and fp32 and isinstance(speedup, (int, float)) and speedup > 0:
        peak["int8"] = Figure(round(fp32 * speedup, 3), mark="C",
                              source=source + f": fp32 peak x measured int8 QDQ conv speed-up {speedup:.2f}")
    decode = device.weight_decode
    measured_slowdown = data.get("weight_decode_slowdown")
    if isinstance(measured_slowdown, dict) and decode.mode == "runtime":
        slowdown = dict(decode.slowdown)
        slowdown.update({k: max(float(v), 1.0) for k, v in measured_slowdown.items()
                         if k in OP_CLASSES and isinstance(v, (int, float))})
        layer_us = data.get("weight_decode_layer_us")
        layer_us = float(layer_us) if isinstance(layer_us, (int, float)) and layer_us >= 0 else decode.layer_us
        decode = dataclasses.replace(decode, slowdown=slowdown, layer_us=layer_us, mark="C", source=source)
    overheads = {}
    for key in ("layer_overhead_us", "run_overhead_us"):
        value = data.get(key)
        if isinstance(value, (int, float)) and value >= 0:
            overheads[key] = Figure(float(value), source=source, mark="C")
    class_overhead = {k: float(v) for k, v in (data.get("class_overhead_us") or {}).items()
                      if k in OP_CLASSES and isinstance(v, (int, float)) and v >= 0}
    return dataclasses.replace(device, efficiency=efficiency, dram_gbps=dram, peak_gops=peak, calibrated=True,
                               calibration=data, weight_decode=decode, class_overhead_us=class_overhead,
                               **overheads)
