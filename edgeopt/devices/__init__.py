"""Device profiles: YAML data, every figure with its source.

A built-in profile models one device + runtime + precision (+ threads on CPUs):
`load_device("rpi4-ncnn-fp16-4t")` reads `edgeopt/devices/rpi4-ncnn-fp16-4t.yaml`
over its chip file (`base: chips/rpi4.yaml`); a device's old short name
(`rpi4`) picks its default variant (aliases.yaml); `load_device("own.yaml")`
reads a user's file. The `host` profile is overlaid with the calibration that
`edgeopt calibrate host` stored in the user cache folder, when there is one.

A figure in the YAML is either a plain number (user files) or a mapping::

    dram_gbps: {value: 25.6, mark: P, source: "NVIDIA Jetson Nano data sheet"}
    dram_gbps: {value: null, note: "not published", assume: 12.8}
    layer_overhead_us: {value: 41.3, mark: C, prior: 20, source: "fitted to 16 published rows ..."}

`mark` is P (published spec), M (third-party measurement), I (inference) or
C (calibrated: fitted to measurements; `prior` is what it was before the fit).
`value: null` says the figure is not known; `assume` is what the cost model
uses instead, and every profile that relies on an assumption lists it
(`Profile.totals["assumptions"]`).

Modules: model (the dataclasses), loader (YAML -> Device), host (the host
calibration overlay), measurements (latency tables), fitting (least squares
of the free figures), validation (errors, leave-one-architecture-out).

Units: peak throughput in GOPS (10^9 ops/s; one MAC is two ops), bandwidth
in GB/s (10^9 bytes/s), memory in bytes, power in W, energy in pJ.
"""

from edgeopt.devices.host import apply_host_calibration, cache_dir, calibration_warning, host_calibration_path
from edgeopt.devices.loader import DEVICE_DIR, _load_file, device_names, load_device, parse_device
from edgeopt.devices.model import (MARKS, OP_CLASSES, PRECISION_BYTES, PRECISIONS, WEIGHT_DECODE_MODES, Device,
                                   Figure, WeightDecode)

__all__ = [
    "DEVICE_DIR", "MARKS", "OP_CLASSES", "PRECISIONS", "PRECISION_BYTES", "WEIGHT_DECODE_MODES", "Device",
    "Figure", "WeightDecode", "apply_host_calibration", "cache_dir", "calibration_warning", "device_names",
    "host_calibration_path", "load_device", "parse_device", "_load_file",
]
