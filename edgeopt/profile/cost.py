"""Roofline latency and energy of one layer on one device.

    time   = max(ops / (peak[p] x efficiency[class] x lane use), dram_bytes / dram_bandwidth) + overhead
    energy = MACs x pJ/MAC[p] + other ops x pJ/MAC[p] / 2
             + dram_bytes x pJ/DRAM byte + working-set bytes x pJ/SRAM byte

- p, the compute precision: the layer's stored precision (its weights', else
  its input activation's) if the device computes in it, else the nearest it
  does (Device.compute_precision). Activations take p's width on the device.
- Weights that all fit the on-chip memory together stay there across
  inferences (a Coral Edge TPU caches them, a CPU's last-level cache keeps
  them warm): they move no DRAM bytes, and the activations get what is left.
- dram_bytes: the weights, moved once (at their stored size, or at p's width
  when that is smaller: an fp32 weight on an fp16 device is converted once
  offline), plus the input and output activations only when the working set
  (weights + activations) does not fit the on-chip memory. A device with no
  known on-chip memory spills every layer.
- class is the layer's shape class (profile/shapeclass.py: conv3x3, pointwise, depthwise,
  conv, gemm, elementwise; a grouped conv takes its kernel's class with per-group lanes):
  runtimes run different kernels for each. A shallow reduction (few input channels x kernel
  taps per output) keeps the lanes busy only part of the time: depth / (depth + depth_half).
- A device with `weight_cache: partial` (the Edge TPU) caches the weights of the first
  layers that fit its on-chip memory and streams the rest on every inference; its
  activations stay on chip. `activations_onchip` alone keeps activations from spilling.
- A data-movement layer (Transpose, Concat, ...) that stays on chip is priced
  as one op per output element at the `data` efficiency (a strided copy; a
  profile without one uses its element-wise efficiency).
- Fused layers cost nothing here: their ops are in their anchor's group.
- arithmetic intensity = ops / bytes the layer touches (weights + activations
  at device width), so it does not depend on the on-chip verdict; `bound` is
  what the roofline says with the bytes really moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.devices import PRECISION_BYTES, Device
from edgeopt.profile.counting import DATA, ELEMENTWISE, QDQ, VIEW


@dataclass
class WeightItem:
    stored_bytes: int  # dense or sparse-encoded, as the device would hold it
    numel: int


@dataclass
class ActItem:
    numel: int | None
    precision: str | None  # fp32 / fp16 / int8 / int4 or None (index tensors: keep stored bytes)
    stored_bytes: int | None


@dataclass
class LayerCost:
    compute_precision: str
    weight_bytes: int  # weights as the device holds them (min of stored and compute width)
    compute_s: float | None
    memory_s: float | None
    latency_s: float | None
    dram_bytes: int | None
    working_set_bytes: int | None
    fits_onchip: bool | None
    bound: str | None
    energy_pj: float | None
    arithmetic_intensity: float | None


def device_act_bytes(device: Device | None, item: ActItem) -> int | None:
    if item.numel is None:
        return None
    if device is None or item.precision is None:
        return item.stored_bytes
    p = device.compute_precision(item.precision)
    return int(item.numel * PRECISION_BYTES[p] + 0.5)


def device_weight_bytes(device: Device, stored_precision: str | None, weights: list[WeightItem]) -> int:
    """Weight bytes as the device holds them: stored size, or the compute width when smaller (an fp32
    weight on an fp16 device is converted once, on an int8 device quantized once; int4 stays int4)."""
    p = device.compute_precision(stored_precision or device.default_precision)
    if p not in ("fp16", "fp32") and stored_precision not in (None, "fp16", "fp32"):
        return sum(w.stored_bytes for w in weights)  # already integer: held as stored (int4 stays int4)
    width = PRECISION_BYTES[p]  # fp32 weights on an int8-only device (Edge TPU) are quantized once
    return sum(min(w.stored_bytes, int(w.numel * width + 0.5)) for w in weights)


def layer_cost(device: Device, *, op_class: str, macs: int | None, ops: int | None, stored_precision: str,
               weights: list[WeightItem], acts: list[ActItem], weights_resident: bool = False,
               resident_bytes: int = 0, slowdown: float = 1.0, extra_s: float = 0.0,
               cost_class: str | None = None, utilization: float = 1.0,
               weights_cached: bool | None = None) -> LayerCost:
    """Roofline cost of one layer (or fusion group).

    weights_resident: all the model's weights (`resident_bytes`) stay in on-chip memory
    across inferences, so weights move no DRAM bytes and activations have the rest.
    slowdown, extra_s: compute-time factor and fixed time for weights decoded on every run
    (Device.weight_decode).
    cost_class: the shape class whose efficiency applies (profile/shapeclass.py; default op_class);
    utilization: fraction of the vector lanes the layer's channels fill (compute time / utilization).
    weights_cached: with `weight_cache: partial` (Edge TPU), whether this layer's weights are among
    those the on-chip cache holds; the others stream from off-chip on every inference.
    """
    p = device.compute_precision(stored_precision or device.default_precision)
    weight_bytes = device_weight_bytes(device, stored_precision, weights)
    act_sizes = [device_act_bytes(device, a) for a in acts]
    if ops is None or any(s is None for s in act_sizes):
        return LayerCost(p, weight_bytes, None, None, None, None, None, None, None, None, None)
    act_bytes = sum(act_sizes)
    working_set = weight_bytes + act_bytes
    capacity = device.onchip_capacity
    if weights_cached is not None:  # partial weight cache: activations stay on chip, weights as cached
        fits = True
        dram_bytes = 0 if weights_cached else weight_bytes
    elif device.activations_onchip:
        fits = weights_resident
        dram_bytes = 0 if weights_resident else weight_bytes
    elif weights_resident and capacity is not None:
        fits = act_bytes <= capacity - resident_bytes
        dram_bytes = 0 if fits else act_bytes
    else:
        fits = capacity is not None and working_set <= capacity
        dram_bytes = weight_bytes + (0 if fits else act_bytes)

    fits_known = fits if capacity is not None else None  # unknown on-chip memory: priced as spilling
    if op_class == VIEW:
        return LayerCost(p, weight_bytes, 0.0, 0.0, 0.0, 0, working_set, fits_known, "free", 0.0, None)

    effective_ops = ops
    cls = cost_class or op_class
    if op_class == DATA and fits:
        effective_ops = ops + sum(a.numel or 0 for a in acts) // 2  # a copy: ~one op per element moved
    if op_class == QDQ:  # a data layer keeps its own class: "data" (Device.efficiency_for falls back)
        cls = ELEMENTWISE
    peak = device.peak_ops_per_s(p)
    compute_s = (effective_ops * slowdown / (peak * device.efficiency_for(cls) * max(utilization, 1e-3))
                 if peak else None)
    bandwidth = device.dram_bytes_per_s
    memory_s = dram_bytes / bandwidth if bandwidth else None
    if compute_s is None or memory_s is None:
        return LayerCost(p, weight_bytes, compute_s, memory_s, None, dram_bytes, working_set, fits_known,
                         None, None, None)
    latency = max(compute_s, memory_s) + device.layer_overhead_s(cls) + extra_s
    bound = "compute" if compute_s >= memory_s else "memory"

    energy = None
    e_mac = device.energy_pj_per_mac.get(p)
    e_mac = e_mac.effective if e_mac is not None else None
    e_dram = device.energy_pj_per_dram_byte.effective
    e_sram = device.energy_pj_per_sram_byte.effective
    if e_mac is not None and e_dram is not None and e_sram is not None:
        macs = macs or 0
        other_ops = max(ops - 2 * macs, 0)
        energy = macs * e_mac + other_ops * e_mac / 2 + dram_bytes * e_dram + working_set * e_sram
    intensity = ops / working_set if working_set else None
    return LayerCost(p, weight_bytes, compute_s, memory_s, latency, dram_bytes, working_set, fits_known, bound,
                     energy, intensity)
