"""The device profile as data: Figure (one sourced number), WeightDecode, Device (what the cost model reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("int4", "int8", "fp16", "fp32")  # narrow to wide; "nearest" walks this order
PRECISION_BYTES = {"int4": 0.5, "int8": 1, "fp16": 2, "fp32": 4}
OP_CLASSES = ("conv", "depthwise", "gemm", "elementwise")
# efficiency keys: the counting classes plus the conv refinements of profile/shapeclass.py (fall back to conv)
CONV_CLASSES = ("conv3x3", "pointwise", "grouped")  # refinements of conv (profile/shapeclass.py)
# data: data movement (Transpose, Concat, Split, Slice, Resize, ...), a strided copy rather than arithmetic
# on a stream; falls back to elementwise
EFFICIENCY_CLASSES = ("conv", "conv3x3", "pointwise", "grouped", "depthwise", "gemm", "elementwise", "data")
# a refined class a profile gives no figure for takes its parent's (efficiency and per-layer overhead)
CLASS_FALLBACK = {**{c: "conv" for c in CONV_CLASSES}, "data": "elementwise"}
WEIGHT_CACHE_MODES = ("all", "partial")
# an efficiency is achieved ops / (peak x nominal ops); a 3x3 stride-1 conv can beat 1 because Winograd
# (ncnn, TVM, TensorRT, ARM Compute) does up to ~4x fewer multiplications than the nominal MACs
EFFICIENCY_CAP = {"conv3x3": 4.0}
MARKS = ("P", "M", "I", "C")

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
_FIGURE_KEYS = {"value", "source", "mark", "note", "assume", "unit", "prior"}


@dataclass(frozen=True)
class Figure:
    """One device figure: its value (None when unknown) and where it comes from."""

    value: Any = None
    source: str | None = None
    mark: str | None = None  # P / M / I / C
    note: str | None = None
    assume: float | None = None  # used by the cost model when value is None
    prior: float | None = None  # a fitted figure (mark C): its value before the fit

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
        depth_half: reduction depth (MACs per output element) at which a GEMM-like layer keeps half
            its efficiency (profile/shapeclass.py); None: depth does not matter.
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
    # what the profile models, in the truth table's vocabulary (device_key / runtime_key / threads_n)
    device_key: str = ""
    runtime: str = ""
    threads: int | None = None
    host_link_gbps: Figure = field(default_factory=Figure)  # inputs / outputs cross it on every inference
    weight_cache: str = "all"  # all: weights stay on chip only if all fit; partial: the first ones that fit
    activations_onchip: bool = False  # activations never spill (Edge TPU: the compiler keeps them on chip)
    # whether a layer's reduction (input channels) pads the vector lanes too, or only its outputs do
    # (profile/shapeclass.py lane_utilization): true for arrays, GPU tiles and ncnn's packed layouts
    reduction_lanes: bool = True
    fit: dict = field(default_factory=dict)  # rows the C figures were fitted on and the fit's error
    validation: dict = field(default_factory=dict)  # held against published rows (in sample, leave-one-arch-out)
    variant: str = ""  # loaded by a short name (aliases.yaml): the profile it picked
    depth_half: Figure = field(default_factory=Figure)  # GEMM kernels lose half their efficiency at this depth

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
        if (fig is None or fig.effective is None) and op_class in CLASS_FALLBACK:
            fig = self.efficiency.get(CLASS_FALLBACK[op_class])
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
        us = self.class_overhead_us.get(op_class)
        if us is None and op_class in CLASS_FALLBACK:  # a 3x3 conv pays the conv set-up `calibrate host` measured
            us = self.class_overhead_us.get(CLASS_FALLBACK[op_class])
        return self.overhead_s + float(us or 0.0) * 1e-6

    @property
    def host_link_bytes_per_s(self) -> float | None:
        value = self.host_link_gbps.effective
        return None if value is None else float(value) * 1e9

    @property
    def run_overhead_s(self) -> float:
        value = self.run_overhead_us.effective
        return 0.0 if value is None else float(value) * 1e-6

    def figures(self) -> list[tuple[str, Figure]]:
        """Every figure with a dotted key, for `edgeopt devices NAME` and for assumption lists."""
        out: list[tuple[str, Figure]] = []
        for p, fig in self.peak_gops.items():
            out.append((f"peak_gops.{p}", fig))
        for key in ("dram_gbps", "host_link_gbps", "onchip_bytes", "onchip_gbps", "power_w", "cores", "depth_half"):
            if key in ("host_link_gbps", "depth_half") and getattr(self, key) == Figure():
                continue  # no host link: nothing crosses one; no depth figure: depth does not matter
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


