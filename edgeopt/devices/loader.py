"""Reading device YAML: built-in profiles by name (with their `base:` chip file), a user's file by path.

A bad file is one UserError line naming the file and the field; an unknown name gets a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

import yaml

from edgeopt.devices.model import (_FIGURE_KEYS, EFFICIENCY_CAP, EFFICIENCY_CLASSES, MARKS, OP_CLASSES, PRECISIONS,
                                   WEIGHT_CACHE_MODES, WEIGHT_DECODE_MODES, Device, Figure, WeightDecode)
from edgeopt.devices.host import apply_host_calibration
from edgeopt.errors import UserError

DEVICE_DIR = Path(__file__).resolve().parent

_TOP_KEYS = {
    "name", "title", "kind", "notes", "precisions", "default_precision", "peak_gops", "dram_gbps",
    "onchip_bytes", "onchip_gbps", "power_w", "alignment", "efficiency", "fuses", "energy_pj",
    "sparse_weights", "layer_overhead_us", "run_overhead_us", "cores", "weight_decode",
    "base", "device", "runtime", "threads", "host_link_gbps", "weight_cache", "activations_onchip", "fit",
    "reduction_lanes",
    "validation", "class_overhead_us", "depth_half",
}
_MERGED_KEYS = {"peak_gops", "efficiency", "energy_pj", "alignment"}  # a variant overrides these key by key
ALIASES_FILE = DEVICE_DIR / "aliases.yaml"


def aliases() -> dict[str, str]:
    """Old short names (a device) -> the profile they pick: the device's default variant."""
    data = yaml.safe_load(ALIASES_FILE.read_text()) if ALIASES_FILE.exists() else {}
    return {str(k): str(v) for k, v in (data or {}).items()}

# -- loading ------------------------------------------------------------------------------

def device_names() -> list[str]:
    """Names of the built-in device profiles (one per device + runtime + precision + threads)."""
    return sorted(p.stem for p in DEVICE_DIR.glob("*.yaml") if p != ALIASES_FILE)


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
    alias, text = text, aliases().get(text, text)
    path = DEVICE_DIR / f"{text}.yaml"
    if not path.exists():
        names = sorted(set(device_names()) | set(aliases()))
        close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown device {text!r}; {hint}known devices: {', '.join(names)} "
                        "(or give a path to a device YAML)")
    device = _load_file(path)
    if device.name == "host":
        device = apply_host_calibration(device)
    if alias != text:  # an old short name: reports keep the name the user gave, and say which variant
        device = dataclasses.replace(device, name=alias, variant=text)
    return device


def _load_file(path: Path) -> Device:
    data = _read_yaml(path)
    if isinstance(data, dict) and data.get("base") is not None:
        data = _with_base(data, path)
    return parse_device(data, path)


def _with_base(data: dict, path: Path) -> dict:
    """A variant over its chip file: the chip's figures, the variant's keys on top (dicts key by key)."""
    base_ref = data["base"]
    if not isinstance(base_ref, str) or not base_ref:
        raise UserError(f"{path}: base: must be the path of a chip file, relative to {path.name}")
    base_path = (path.parent / base_ref).resolve()
    if not base_path.exists():
        raise UserError(f"{path}: base: {base_ref} not found")
    merged = _read_yaml(base_path)
    if merged.get("base") is not None:
        raise UserError(f"{base_path}: a chip file cannot have a base of its own")
    merged = dict(merged)
    for key, value in data.items():
        if key in _MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key != "base":
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
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
    return data


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
        fail("efficiency", f"must map op classes ({', '.join(EFFICIENCY_CLASSES)}) to fractions of peak")
    efficiency = {}
    for cls, raw in efficiency_raw.items():
        if cls not in EFFICIENCY_CLASSES:
            close = difflib.get_close_matches(str(cls), EFFICIENCY_CLASSES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; use {', '.join(EFFICIENCY_CLASSES)}"
            fail(f"efficiency.{cls}", f"unknown op class{hint}")
        fig = _figure(raw, f"efficiency.{cls}", fail, positive=True)
        cap = EFFICIENCY_CAP.get(cls, 1.0)
        if fig.effective is not None and fig.effective > cap:
            fail(f"efficiency.{cls}", f"{fig.effective} is a fraction of peak and must be in (0, {cap:g}]")
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
        depth_half=_figure(data.get("depth_half"), "depth_half", fail, positive=True),
        weight_decode=decode,
        class_overhead_us=_class_overhead(data.get("class_overhead_us"), fail),
        **_runtime_fields(data, fail),
    )


def _class_overhead(raw, fail) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail("class_overhead_us", "must map op classes to extra µs per layer")
    out = {}
    for cls, value in raw.items():
        if cls not in EFFICIENCY_CLASSES:
            fail(f"class_overhead_us.{cls}", f"unknown op class; use {', '.join(EFFICIENCY_CLASSES)}")
        fig = _figure(value, f"class_overhead_us.{cls}", fail, nonneg=True)
        out[cls] = float(fig.effective or 0.0)
    return out


def _runtime_fields(data: dict, fail) -> dict:
    """What the profile models (device, runtime, threads) and how its memory behaves."""
    threads = data.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        fail("threads", f"must be a positive integer (CPU threads) or null for an accelerator, got {threads!r}")
    cache = data.get("weight_cache", "all")
    if cache not in WEIGHT_CACHE_MODES:
        fail("weight_cache", f"{cache!r}: use {', '.join(WEIGHT_CACHE_MODES)}")
    act_onchip = data.get("activations_onchip", False)
    if not isinstance(act_onchip, bool):
        fail("activations_onchip", f"must be true or false, got {act_onchip!r}")
    reduction_lanes = data.get("reduction_lanes", True)
    if not isinstance(reduction_lanes, bool):
        fail("reduction_lanes", f"must be true or false, got {reduction_lanes!r}")
    for key in ("fit", "validation"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            fail(key, "must be a mapping")
    for key in ("device", "runtime"):
        if data.get(key) is not None and not isinstance(data[key], str):
            fail(key, "must be a string")
    return dict(
        device_key=str(data.get("device") or data.get("name") or ""),
        runtime=str(data.get("runtime") or ""),
        threads=threads,
        host_link_gbps=_figure(data.get("host_link_gbps"), "host_link_gbps", fail, positive=True),
        weight_cache=cache,
        activations_onchip=act_onchip,
        reduction_lanes=reduction_lanes,
        fit=dict(data.get("fit") or {}),
        validation=dict(data.get("validation") or {}),
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
    for label, v in (("value", value), ("assume", assume), ("prior", raw.get("prior"))):
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
    return Figure(value=value, source=raw.get("source"), mark=mark, note=raw.get("note"), assume=assume,
                  prior=raw.get("prior"))


