"""Device profiles: YAML data, every figure with its source.

`load_device("myriadx")` reads the built-in profile `edgeopt/devices/myriadx.yaml`;
`load_device("path/to/own.yaml")` reads a user's file. A bad file is one
UserError line naming the file and the field; an unknown name gets a
"did you mean". The `host` profile is overlaid with the calibration that
`edgeopt calibrate host` stored in the user cache folder, when there is one.

A figure in the YAML is either a plain number (user files) or a mapping::

    dram_gbps: {value: 25.6, mark: P, source: "NVIDIA Jetson Nano data sheet"}
    dram_gbps: {value: null, note: "not published", assume: 12.8}

`mark` is P (published spec), M (third-party measurement), I (inference) or
C (calibrated on this machine). `value: null` says the figure is not known;
`assume` is what the cost model uses instead, and every profile that relies
on an assumption lists it (`Profile.totals["assumptions"]`).

Units: peak throughput in GOPS (10^9 ops/s; one MAC is two ops), bandwidth
in GB/s (10^9 bytes/s), memory in bytes, power in W, energy in pJ.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeopt.errors import UserError

DEVICE_DIR = Path(__file__).resolve().parent

PRECISIONS = ("int4", "int8", "fp16", "fp32")  # narrow to wide; "nearest" walks this order
PRECISION_BYTES = {"int4": 0.5, "int8": 1, "fp16": 2, "fp32": 4}
OP_CLASSES = ("conv", "depthwise", "gemm", "elementwise")
MARKS = ("P", "M", "I", "C")

_TOP_KEYS = {
    "name", "title", "kind", "notes", "precisions", "default_precision", "peak_gops", "dram_gbps",
    "onchip_bytes", "onchip_gbps", "power_w", "alignment", "efficiency", "fuses", "energy_pj",
    "sparse_weights", "layer_overhead_us", "run_overhead_us", "cores", "weight_decode",
}
WEIGHT_DECODE_MODES = ("native", "load", "runtime")


@dataclass(frozen=True)
class WeightDecode:
    """What the device does with low-bit weights that feed a layer with wider activations.

    native: the layer computes in the stored weight precision (mapped to the device);
    load: weights are decoded once at load, the layer computes at the activation precision;
    runtime: decode ops in `runtime_ops` run on every inference (other decodes fold at load)
    and the layer runs `slowdown[class]` times slower (decode pass, no pre-packed weights)
    plus `layer_us` per decoded layer (the decode node itself).
    """

    mode: str = "native"
    runtime_ops: tuple[str, ...] = ()
    slowdown: dict = field(default_factory=dict)
    layer_us: float = 0.0  # fixed cost of decoding one layer's weights at run time
    source: str | None = None
    mark: str | None = None
_FIGURE_KEYS = {"value", "source", "mark", "note", "assume", "unit"}


@dataclass(frozen=True)
class Figure:
    """One device figure: its value (None when unknown) and where it comes from."""

    value: Any = None
    source: str | None = None
    mark: str | None = None  # P / M / I / C
    note: str | None = None
    assume: float | None = None  # used by the cost model when value is None

    @property
    def effective(self):
        """The value, or the stated assumption when the value is unknown."""
        return self.value if self.value is not None else self.assume

    @property
    def assumed(self) -> bool:
        return self.value is None and self.assume is not None

    def describe(self) -> str:
        if self.value is None:
            text = "null"
            if self.assume is not None:
                text += f" (assumed {self.assume:g})"
        else:
            value = self.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                text = str(value)
            elif float(value).is_integer() and abs(value) >= 1e5:
                text = str(int(value))
            else:
                text = f"{value:g}"
        return text


@dataclass
class Device:
    """A device profile.

    Attributes:
        name: short name (`myriadx`), also the YAML file stem for built-ins.
        title: human name of the part.
        path: the YAML file it was read from.
        precisions: the precisions the device computes in (accelerates), narrow to wide.
        default_precision: the precision a float model runs in on this device.
        peak_gops: peak throughput per precision, GOPS (1 MAC = 2 ops).
        dram_gbps: DRAM (off-chip) bandwidth, GB/s.
        onchip_bytes: on-chip memory (SRAM / CMX / last-level cache) that keeps a
            layer's working set without DRAM traffic; None -> everything spills.
        onchip_gbps: on-chip memory bandwidth, GB/s (informational).
        power_w: typical power, W.
        alignment: channel multiple per precision (pruning rounds to it).
        efficiency: achieved fraction of peak per op class (conv, depthwise, gemm, elementwise).
        fuses: op types the device (its compiler) fuses into a preceding Conv / Gemm.
        energy_pj_per_mac: per precision; energy_pj_per_dram_byte / _sram_byte.
        sparse_weights: whether weights can stay sparse-encoded in memory.
        layer_overhead_us: fixed cost per executed layer (dispatch), µs.
        run_overhead_us: fixed cost per inference (runtime call, input / output copies), µs.
        weight_decode: how weight-only quantized layers run (see WeightDecode).
        calibrated: True when measured factors from `edgeopt calibrate host` are in use.
    """

    name: str
    title: str
    path: str
    precisions: tuple[str, ...]
    default_precision: str
    peak_gops: dict[str, Figure]
    dram_gbps: Figure
    onchip_bytes: Figure
    onchip_gbps: Figure
    power_w: Figure
    alignment: dict[str, int]
    efficiency: dict[str, Figure]
    fuses: tuple[str, ...]
    energy_pj_per_mac: dict[str, Figure]
    energy_pj_per_dram_byte: Figure
    energy_pj_per_sram_byte: Figure
    sparse_weights: Figure
    layer_overhead_us: Figure
    run_overhead_us: Figure = field(default_factory=Figure)
    kind: str = ""
    notes: str = ""
    cores: Figure = field(default_factory=Figure)
    weight_decode: WeightDecode = field(default_factory=WeightDecode)
    class_overhead_us: dict = field(default_factory=dict)  # op class -> extra fixed µs per layer
    calibrated: bool = False
    calibration: dict = field(default_factory=dict)

    # -- what the cost model and the passes read --------------------------------------------
    @property
    def channel_alignment(self) -> int:
        """Channel multiple for the default precision (`round_to: device` in prune_channels)."""
        return self.alignment_for(self.default_precision)

    def alignment_for(self, precision: str) -> int:
        return int(self.alignment.get(precision, self.alignment.get("default", 1)) or 1)

    def compute_precision(self, stored: str) -> str:
        """The precision a layer whose data is stored in `stored` computes in on this device.

        The stored precision when the device supports it, else the nearest wider
        one it supports (int8 weights on an fp16-only device compute in fp16), else
        the widest narrower one (fp32 on an fp16-only device computes in fp16).
        """
        if stored in self.precisions:
            return stored
        order = list(PRECISIONS)
        idx = order.index(stored) if stored in order else order.index("fp32")
        for p in order[idx + 1:]:
            if p in self.precisions:
                return p
        for p in reversed(order[:idx]):
            if p in self.precisions:
                return p
        return self.default_precision

    def peak_ops_per_s(self, precision: str) -> float | None:
        fig = self.peak_gops.get(precision)
        value = fig.effective if fig else None
        return None if value is None else float(value) * 1e9

    def efficiency_for(self, op_class: str) -> float:
        fig = self.efficiency.get(op_class)
        value = fig.effective if fig else None
        return 1.0 if value is None else float(value)

    @property
    def dram_bytes_per_s(self) -> float | None:
        value = self.dram_gbps.effective
        return None if value is None else float(value) * 1e9

    @property
    def onchip_capacity(self) -> int | None:
        value = self.onchip_bytes.effective
        return None if value is None else int(value)

    @property
    def supports_sparse(self) -> bool:
        return bool(self.sparse_weights.effective)

    @property
    def overhead_s(self) -> float:
        value = self.layer_overhead_us.effective
        return 0.0 if value is None else float(value) * 1e-6

    def layer_overhead_s(self, op_class: str) -> float:
        """Fixed time per executed layer: generic dispatch plus the op class's own set-up."""
        return self.overhead_s + float(self.class_overhead_us.get(op_class, 0.0)) * 1e-6

    @property
    def run_overhead_s(self) -> float:
        value = self.run_overhead_us.effective
        return 0.0 if value is None else float(value) * 1e-6

    def figures(self) -> list[tuple[str, Figure]]:
        """Every figure with a dotted key, for `edgeopt devices NAME` and for assumption lists."""
        out: list[tuple[str, Figure]] = []
        for p, fig in self.peak_gops.items():
            out.append((f"peak_gops.{p}", fig))
        for key in ("dram_gbps", "onchip_bytes", "onchip_gbps", "power_w", "cores"):
            out.append((key, getattr(self, key)))
        for cls, fig in self.efficiency.items():
            out.append((f"efficiency.{cls}", fig))
        for p, fig in self.energy_pj_per_mac.items():
            out.append((f"energy_pj.mac.{p}", fig))
        out.append(("energy_pj.dram_byte", self.energy_pj_per_dram_byte))
        out.append(("energy_pj.sram_byte", self.energy_pj_per_sram_byte))
        out.append(("sparse_weights", self.sparse_weights))
        out.append(("layer_overhead_us", self.layer_overhead_us))
        out.append(("run_overhead_us", self.run_overhead_us))
        return out

    def assumptions(self) -> list[str]:
        return [f"{key}={fig.assume:g}" for key, fig in self.figures() if fig.assumed]


# -- loading ------------------------------------------------------------------------------

def device_names() -> list[str]:
    """Names of the built-in device profiles."""
    return sorted(p.stem for p in DEVICE_DIR.glob("*.yaml"))


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


def load_device(name_or_path: str) -> Device:
    """A built-in profile by name, or a device YAML by path."""
    if name_or_path is None or str(name_or_path).strip() == "":
        raise UserError("--device: empty device name; see `edgeopt devices` for the profiles")
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(text)
        if not path.exists():
            raise UserError(f"{path}: device file not found; check the path")
        return _load_file(path)
    path = DEVICE_DIR / f"{text}.yaml"
    if not path.exists():
        names = device_names()
        close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown device {text!r}; {hint}known devices: {', '.join(names)} "
                        "(or give a path to a device YAML)")
    device = _load_file(path)
    if device.name == "host":
        device = apply_host_calibration(device)
    return device


def _load_file(path: Path) -> Device:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}; fix the syntax") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read device file ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a device file must be a mapping of fields (name, precisions, peak_gops, ...)")
    return parse_device(data, path)


def parse_device(data: dict, path: Path | str = "<device>") -> Device:
    """Validate a device mapping; errors name the file and the field."""
    where = str(path)

    def fail(field_name: str, problem: str):
        raise UserError(f"{where}: {field_name}: {problem}")

    for key in data:
        if key not in _TOP_KEYS:
            close = difflib.get_close_matches(str(key), sorted(_TOP_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(sorted(_TOP_KEYS))}"
            fail(str(key), f"unknown field{hint}")

    name = data.get("name", Path(where).stem)
    if not isinstance(name, str) or not name:
        fail("name", "must be a non-empty string")

    precisions = data.get("precisions")
    if precisions is None:
        fail("precisions", "missing; list the precisions the device computes in, e.g. [fp16]")
    if isinstance(precisions, str):
        precisions = [precisions]
    if not isinstance(precisions, list) or not precisions:
        fail("precisions", "must be a non-empty list such as [fp32, int8]")
    for p in precisions:
        if p not in PRECISIONS:
            fail("precisions", f"unknown precision {p!r}; use {', '.join(PRECISIONS)}")
    precisions = tuple(p for p in PRECISIONS if p in precisions)

    default_precision = data.get("default_precision", "fp32" if "fp32" in precisions else precisions[-1])
    if default_precision not in precisions:
        fail("default_precision", f"{default_precision!r} is not one of precisions {list(precisions)}")

    peak_raw = data.get("peak_gops")
    if not isinstance(peak_raw, dict) or not peak_raw:
        fail("peak_gops", "missing; give peak throughput per precision, e.g. peak_gops: {fp16: 1000}")
    peak = {}
    for p, raw in peak_raw.items():
        if p not in PRECISIONS:
            fail(f"peak_gops.{p}", f"unknown precision; use {', '.join(PRECISIONS)}")
        peak[p] = _figure(raw, f"peak_gops.{p}", fail, positive=True)
    for p in precisions:
        if p not in peak or peak[p].effective is None:
            fail(f"peak_gops.{p}", f"missing: the device computes in {p} (precisions) so its peak is needed")

    dram = _figure(data.get("dram_gbps"), "dram_gbps", fail, positive=True)
    if dram.effective is None:
        fail("dram_gbps", "missing; give the DRAM bandwidth in GB/s, or value: null with an assume: figure")

    efficiency_raw = data.get("efficiency") or {}
    if not isinstance(efficiency_raw, dict):
        fail("efficiency", f"must map op classes ({', '.join(OP_CLASSES)}) to fractions of peak")
    efficiency = {}
    for cls, raw in efficiency_raw.items():
        if cls not in OP_CLASSES:
            close = difflib.get_close_matches(str(cls), OP_CLASSES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; use {', '.join(OP_CLASSES)}"
            fail(f"efficiency.{cls}", f"unknown op class{hint}")
        fig = _figure(raw, f"efficiency.{cls}", fail, positive=True)
        if fig.effective is not None and fig.effective > 1:
            fail(f"efficiency.{cls}", f"{fig.effective} is a fraction of peak and must be in (0, 1]")
        efficiency[cls] = fig
    for cls in OP_CLASSES:
        efficiency.setdefault(cls, Figure(None, note="not given: peak assumed", assume=1.0))

    alignment_raw = data.get("alignment", {"default": 1})
    if isinstance(alignment_raw, int):
        alignment_raw = {"default": alignment_raw}
    if not isinstance(alignment_raw, dict):
        fail("alignment", "must be a channel multiple or a mapping precision -> multiple, e.g. {fp16: 8}")
    alignment = {}
    for p, raw in alignment_raw.items():
        if p in ("source", "note", "mark"):
            continue
        if p != "default" and p not in PRECISIONS:
            fail(f"alignment.{p}", f"unknown precision; use default or {', '.join(PRECISIONS)}")
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            fail(f"alignment.{p}", f"must be a positive integer channel multiple, got {raw!r}")
        alignment[p] = raw

    fuses = data.get("fuses") or []
    if not isinstance(fuses, list) or not all(isinstance(f, str) for f in fuses):
        fail("fuses", "must be a list of ONNX op types, e.g. [Relu, Clip]")

    energy_raw = data.get("energy_pj") or {}
    if not isinstance(energy_raw, dict):
        fail("energy_pj", "must be a mapping with mac, dram_byte, sram_byte")
    for key in energy_raw:
        if key not in ("mac", "dram_byte", "sram_byte"):
            fail(f"energy_pj.{key}", "unknown field; use mac, dram_byte, sram_byte")
    mac_raw = energy_raw.get("mac") or {}
    if not isinstance(mac_raw, dict):
        fail("energy_pj.mac", "must map precisions to pJ per MAC, e.g. {fp16: 1.5}")
    energy_mac = {}
    for p, raw in mac_raw.items():
        if p not in PRECISIONS:
            fail(f"energy_pj.mac.{p}", f"unknown precision; use {', '.join(PRECISIONS)}")
        energy_mac[p] = _figure(raw, f"energy_pj.mac.{p}", fail, positive=True)

    sparse = _figure(data.get("sparse_weights", False), "sparse_weights", fail, boolean=True)
    decode = _weight_decode(data.get("weight_decode"), fail)

    return Device(
        name=name,
        title=str(data.get("title", name)),
        path=where,
        kind=str(data.get("kind", "")),
        notes=str(data.get("notes", "") or ""),
        precisions=precisions,
        default_precision=default_precision,
        peak_gops=peak,
        dram_gbps=dram,
        onchip_bytes=_figure(data.get("onchip_bytes"), "onchip_bytes", fail, positive=True),
        onchip_gbps=_figure(data.get("onchip_gbps"), "onchip_gbps", fail, positive=True),
        power_w=_figure(data.get("power_w"), "power_w", fail, positive=True),
        cores=_figure(data.get("cores"), "cores", fail, positive=True),
        alignment=alignment or {"default": 1},
        efficiency=efficiency,
        fuses=tuple(fuses),
        energy_pj_per_mac=energy_mac,
        energy_pj_per_dram_byte=_figure(energy_raw.get("dram_byte"), "energy_pj.dram_byte", fail, positive=True),
        energy_pj_per_sram_byte=_figure(energy_raw.get("sram_byte"), "energy_pj.sram_byte", fail, positive=True),
        sparse_weights=sparse,
        layer_overhead_us=_figure(data.get("layer_overhead_us"), "layer_overhead_us", fail, nonneg=True),
        run_overhead_us=_figure(data.get("run_overhead_us"), "run_overhead_us", fail, nonneg=True),
        weight_decode=decode,
    )


def _weight_decode(raw, fail) -> WeightDecode:
    if raw is None:
        return WeightDecode()
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        fail("weight_decode", f"must be a mode ({', '.join(WEIGHT_DECODE_MODES)}) or a mapping with mode")
    for key in raw:
        if key not in ("mode", "runtime_ops", "slowdown", "layer_us", "source", "mark", "note"):
            fail(f"weight_decode.{key}", "unknown key; use mode, runtime_ops, slowdown, layer_us, source, mark")
    mode = raw.get("mode", "native")
    if mode not in WEIGHT_DECODE_MODES:
        fail("weight_decode.mode", f"{mode!r}: use {', '.join(WEIGHT_DECODE_MODES)}")
    ops = raw.get("runtime_ops") or []
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        fail("weight_decode.runtime_ops", "must be a list of ONNX op types, e.g. [DequantizeLinear]")
    slowdown = raw.get("slowdown") or {}
    if not isinstance(slowdown, dict):
        fail("weight_decode.slowdown", f"must map op classes ({', '.join(OP_CLASSES)}) to factors >= 1")
    for cls, value in slowdown.items():
        if cls not in OP_CLASSES:
            fail(f"weight_decode.slowdown.{cls}", f"unknown op class; use {', '.join(OP_CLASSES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            fail(f"weight_decode.slowdown.{cls}", f"must be a number >= 1, got {value!r}")
    layer_us = raw.get("layer_us", 0.0)
    if isinstance(layer_us, bool) or not isinstance(layer_us, (int, float)) or layer_us < 0:
        fail("weight_decode.layer_us", f"must be a number >= 0 (µs per decoded layer), got {layer_us!r}")
    return WeightDecode(mode=mode, runtime_ops=tuple(ops), slowdown={k: float(v) for k, v in slowdown.items()},
                        layer_us=float(layer_us), source=raw.get("source") or raw.get("note"), mark=raw.get("mark"))


def _figure(raw, field_name: str, fail, positive: bool = False, nonneg: bool = False,
            boolean: bool = False) -> Figure:
    if raw is None:
        return Figure(None)
    if not isinstance(raw, dict):
        raw = {"value": raw}
    for key in raw:
        if key not in _FIGURE_KEYS:
            fail(f"{field_name}.{key}", f"unknown key; a figure has {', '.join(sorted(_FIGURE_KEYS))}")
    value = raw.get("value")
    assume = raw.get("assume")
    for label, v in (("value", value), ("assume", assume)):
        if v is None:
            continue
        if boolean:
            if not isinstance(v, bool):
                fail(f"{field_name}", f"{label} must be true or false, got {v!r}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(field_name, f"{label} must be a number, got {v!r}")
        if positive and v <= 0:
            fail(field_name, f"{label} must be > 0, got {v!r}")
        if nonneg and v < 0:
            fail(field_name, f"{label} must be >= 0, got {v!r}")
    mark = raw.get("mark")
    if mark is not None and mark not in MARKS:
        fail(f"{field_name}.mark", f"{mark!r}: use P (published), M (measured), I (inferred) or C (calibrated)")
    return Figure(value=value, source=raw.get("source"), mark=mark, note=raw.get("note"), assume=assume)


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
        if cls in OP_CLASSES and isinstance(value, (int, float)) and value > 0:
            efficiency[cls] = Figure(min(float(value), 1.0), source=source, mark="C")
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
