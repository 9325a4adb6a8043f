"""profile_model: counting + weights + fusion + liveness + roofline, one pass over the graph."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from edgeopt.devices import Device
from edgeopt.devices.validation import band
from edgeopt.profile.cost import ActItem, WeightItem, device_act_bytes, device_weight_bytes, layer_cost
from edgeopt.profile.counting import VIEW, Count, count_node, estimate_node
from edgeopt.profile.graphinfo import GraphInfo, analyze, precision_of
from edgeopt.profile.memory import act_inputs, decide_fusion, largest_activation, liveness
from edgeopt.profile.shapeclass import cost_class, depth_utilization, lane_utilization, reduction_depth
from edgeopt.profile.subgraphs import Flat, flatten
from edgeopt.profile.weights import WeightTable, narrower

CONTRACT_TOTALS = ("macs", "params_count", "weight_bytes", "peak_activation_bytes", "est_latency_ms",
                   "est_energy_mj")
CONTRACT_LAYER = ("name", "op_type", "macs", "params_count", "weight_bytes", "output_bytes",
                  "arithmetic_intensity", "est_latency_ms", "bound")


@dataclass
class Profile:
    device: str | None
    totals: dict
    layers: list[dict]
    input_shapes: dict = field(default_factory=dict)

    def to_dict(self, model: str | None = None) -> dict:
        """The `profile --format json` document (DESIGN.md CONTRACT)."""
        return {"model": model, "device": self.device, "totals": self.totals, "layers": self.layers}

    def top_layers(self, n: int | None = None) -> list[dict]:
        """Most expensive layers first (estimated latency, else ops)."""
        key = "est_latency_ms" if self.device else "ops"
        ranked = sorted(self.layers, key=lambda l: (l.get(key) is None, -(l.get(key) or 0)))
        return ranked if n is None else ranked[:n]


def _act_precision(info: GraphInfo, name: str) -> str | None:
    """Precision of an activation; the int8 buffer behind a DequantizeLinear counts as int8."""
    idx = info.producer.get(name)
    if idx is not None and info.nodes[idx].op_type == "DequantizeLinear":
        src = info.info(info.nodes[idx].input[0])
        if src is not None and precision_of(src.elem_type) in ("int8", "int4"):
            return precision_of(src.elem_type)
    t = info.info(name)
    return precision_of(t.elem_type) if t is not None else None


def _act_item(info: GraphInfo, name: str, alias: dict, fallback: tuple[int, int] | None = None) -> ActItem:
    """An activation's size at its precision; an unknown size is `fallback` (numel, bytes) when given."""
    real = name
    while real in alias:
        real = alias[real]
    t = info.info(real)
    precision = _act_precision(info, name) if real == name else precision_of(t.elem_type if t else None)
    if t is None or t.numel is None:
        return ActItem(fallback[0], precision, fallback[1]) if fallback else ActItem(None, precision, None)
    return ActItem(t.numel, precision, t.nbytes)


def _known(info: GraphInfo, name: str, alias: dict) -> bool:
    while name in alias:
        name = alias[name]
    t = info.info(name)
    return t is not None and t.numel is not None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _roofline_region(device: Device, cost) -> str | None:
    """The textbook roofline verdict: 'memory' when the layer's arithmetic intensity is below the
    device's ridge point (peak ops / DRAM bandwidth at the compute precision), i.e. it would be
    bandwidth-limited if its bytes came from DRAM; 'compute' above. Unlike `bound`, it ignores the
    efficiency derating and whether the working set stays on chip."""
    peak, bandwidth = device.peak_ops_per_s(cost.compute_precision), device.dram_bytes_per_s
    if cost.arithmetic_intensity is None or not peak or not bandwidth:
        return None
    return "memory" if cost.arithmetic_intensity < peak / bandwidth else "compute"


def profile_model(model: onnx.ModelProto, device: Device | None = None,
                  input_shapes: dict[str, list[int]] | None = None) -> Profile:
    """Per-layer and total cost of `model` on `device` (None: counting and memory only).

    The model is not modified; shape inference runs once on a shallow copy.
    """
    return profile_on_devices(model, [device], input_shapes)[0]


def profile_on_devices(model: onnx.ModelProto, devices: list[Device | None],
                       input_shapes: dict[str, list[int]] | None = None, feeds: dict | None = None) -> list[Profile]:
    """One profile per device, from one analysis of the graph (shape inference runs once; `feeds`:
    real inputs for its onnxruntime step)."""
    flat = flatten(analyze(model, input_shapes, feeds))
    return [_profile(flat, device) for device in devices]


def _profile(flat: Flat, device: Device | None) -> Profile:
    info, runs = flat.info, flat.runs
    order = [i for i in range(len(info.nodes)) if i not in info.const_nodes]
    fallback = largest_activation(info)  # stands in for an activation whose size is unknown
    counts = {}
    for idx in order:
        node = info.nodes[idx]
        if idx in flat.control:  # If / Loop / Scan: its body's layers carry the cost
            counts[idx] = Count(VIEW, 0, 0)
            continue
        ins = [info.info(i) if i else None for i in node.input]
        outs = [info.info(o) if o else None for o in node.output]
        counts[idx] = count_node(node, ins, outs)
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] not in info.const:
            counts[idx] = Count(VIEW, 0, 0)  # static QDQ: the consumer reads the int8 tensor directly
        if not counts[idx].counted:
            counts[idx] = estimate_node(node, ins, outs, counts[idx], fallback[0])

    table = WeightTable(info)
    weights = {}
    for idx in order:
        node = info.nodes[idx]
        buffers = frozenset(node.input[3:5]) if node.op_type == "BatchNormalization" else frozenset()
        weights[idx] = table.layer_weights(idx, [i for i in node.input if i and i in info.const], buffers)
    sparse_ok = bool(device and device.supports_sparse)
    fusion = decide_fusion(info, order, counts, device.fuses if device else (), runs)
    live = liveness(info, order, fusion.virtual, fusion.alias, fusion, unknown_nbytes=fallback[1])
    live_known = liveness(info, order, fusion.virtual, fusion.alias, fusion) if live.unknown_tensors else live
    names = flat.names

    layers = []
    by_idx = {}
    act_precisions = {}
    for idx in order:
        node, count, lw = info.nodes[idx], counts[idx], weights[idx]
        out_sizes = [info.info(o).nbytes if info.info(o) else None for o in node.output if o]
        acts_in = act_inputs(info, node)
        act_precision = _act_precision(info, acts_in[0]) if acts_in else None
        act_precisions[idx] = act_precision
        layer = {
            "name": names[idx],
            "op_type": node.op_type,
            "op_class": count.op_class,
            "macs": None if count.macs is None else count.macs * runs[idx],
            "ops": None if count.ops is None else count.ops * runs[idx],
            "params_count": lw.params_count,
            "weight_bytes": sum(table.stored[r].bytes_on(sparse_ok) for r in lw.roots if r in table.stored),
            "weight_precision": lw.precision,
            "stored_precision": lw.precision or act_precision or "fp32",
            "output_bytes": None if any(s is None for s in out_sizes) else sum(out_sizes),
            "arithmetic_intensity": None,
            "est_latency_ms": None,
            "bound": None,
            "counted": count.counted,
            "estimated": count.estimated,
        }
        if not count.counted:
            layer["note"] = count.reason
        if idx in flat.notes:
            layer["note"] = flat.notes[idx]
        if runs[idx] != 1:
            layer["runs"] = runs[idx]
        if idx in flat.inlined:
            layer["in_subgraph"] = True
        if idx in fusion.anchor_of:
            layer["fused_into"] = names[fusion.anchor_of[idx]]
        layers.append(layer)
        by_idx[idx] = layer

    # cost per group: an anchor with the ops fused into it, or a layer on its own
    resident, resident_bytes = False, 0
    if device is not None and device.onchip_capacity is not None:
        for idx in order:
            if idx not in fusion.anchor_of:
                roots = [r for m in [idx] + fusion.members.get(idx, []) for r in weights[m].roots if r in table.stored]
                resident_bytes += device_weight_bytes(device, by_idx[idx]["stored_precision"], [
                    WeightItem(table.stored[r].bytes_on(sparse_ok), table.stored[r].numel) for r in roots])
        resident = resident_bytes <= device.onchip_capacity
    cached = _partial_cache(device, order, fusion, weights, table, sparse_ok, by_idx) if device is not None else {}
    for idx in order:
        if idx in fusion.anchor_of:
            layer = by_idx[idx]
            if device is not None:
                layer.update(est_latency_ms=0.0, bound="fused", est_energy_mj=0.0, compute_ms=0.0, memory_ms=0.0)
            continue
        members = [idx] + fusion.members.get(idx, [])
        produced = {o for m in members for o in info.nodes[m].output if o}
        ins, outs = [], []
        for m in members:
            for t in act_inputs(info, info.nodes[m]):
                if t not in produced and t not in ins:
                    ins.append(t)
            for o in info.nodes[m].output:
                if o and o not in fusion.virtual and o not in outs and o not in info.const:
                    outs.append(o)
        acts = [_act_item(info, t, fusion.alias, fallback) for t in ins + outs]
        unknown = [t for t in ins + outs if not _known(info, t, fusion.alias)]
        group_ops = [counts[m].ops for m in members]  # per run: the cost below is scaled by runs
        ops = None if any(o is None for o in group_ops) else sum(group_ops)
        roots = [r for m in members for r in weights[m].roots if r in table.stored]
        witems = [WeightItem(table.stored[r].bytes_on(sparse_ok), table.stored[r].numel) for r in roots]
        layer = by_idx[idx]
        if unknown:
            layer["unknown_activations"] = unknown
        stored_precision, slowdown, extra_s = layer["stored_precision"], 1.0, 0.0
        decode = _weight_decode_mode(device, weights[idx], act_precisions[idx])
        if decode is not None:  # weight-only quantized layer on a device that decodes the weights
            layer["weight_decode"] = decode
            stored_precision = act_precisions[idx]
            if decode == "load":  # held decoded, at the activation width
                witems = [WeightItem(int(w.numel * 4), w.numel) for w in witems]
            else:
                slowdown = device.weight_decode.slowdown.get(counts[idx].op_class, 1.0)
                extra_s = device.weight_decode.layer_us * 1e-6
        layer["input_bytes"] = _sum_or_none([device_act_bytes(None, _act_item(info, t, fusion.alias, fallback))
                                             for t in ins])
        if device is None:
            touched = _sum_or_none([w.stored_bytes for w in witems] + [a.stored_bytes for a in acts])
            layer["working_set_bytes"] = touched
            if ops is not None and touched:
                layer["arithmetic_intensity"] = ops / touched
            continue
        node = info.nodes[idx]
        wshape = _weight_shape(info, node, counts[idx])
        cls = cost_class(node, counts[idx].op_class, wshape)
        lanes = device.alignment_for(device.compute_precision(stored_precision or device.default_precision))
        utilization = lane_utilization(node, cls, wshape, lanes, reduction_lanes=device.reduction_lanes)
        layer["cost_class"] = cls
        if utilization < 1.0:
            layer["lane_utilization"] = round(utilization, 4)
        depth = reduction_depth(node, cls, wshape)
        if depth:
            layer["reduction_depth"] = depth
            fill = depth_utilization(depth, device.depth_half.effective)
            if fill < 1.0:
                layer["depth_utilization"] = round(fill, 4)
                utilization *= fill
        cost = layer_cost(device, op_class=counts[idx].op_class, macs=counts[idx].macs, ops=ops,
                          stored_precision=stored_precision, weights=witems, acts=acts,
                          weights_resident=resident, resident_bytes=resident_bytes, slowdown=slowdown,
                          extra_s=extra_s, cost_class=cls, utilization=utilization,
                          weights_cached=cached.get(idx))
        n = runs[idx]  # a Loop / Scan body layer runs n times per inference
        layer.update(
            compute_precision=cost.compute_precision,
            working_set_bytes=cost.working_set_bytes,
            device_weight_bytes=cost.weight_bytes,
            fits_onchip=cost.fits_onchip,
            dram_bytes=_times(cost.dram_bytes, n),
            arithmetic_intensity=cost.arithmetic_intensity,
            compute_ms=_times(_ms(cost.compute_s), n),
            memory_ms=_times(_ms(cost.memory_s), n),
            est_latency_ms=_times(_ms(cost.latency_s), n),
            est_energy_mj=None if cost.energy_pj is None else cost.energy_pj * 1e-9 * n,
            bound=cost.bound,
            roofline_region=_roofline_region(device, cost),
        )

    totals = _totals(info, order, layers, table, sparse_ok, live, names, device)
    if device is not None:
        transfer_ms = _transfer_s(info, device) * 1e3
        totals["est_transfer_ms"] = transfer_ms
        if totals["est_latency_ms"] is not None:
            totals["est_latency_ms"] += transfer_ms
    _subgraph_totals(totals, flat, order, layers, live, live_known)
    return Profile(device=device.name if device else None, totals=totals, layers=layers,
                   input_shapes=info.input_shapes)


def _weight_shape(info: GraphInfo, node, count) -> list[int] | None:
    """Shape of a MAC layer's main weight input, when known."""
    if count.weight_input is None or len(node.input) <= count.weight_input:
        return None
    t = info.info(node.input[count.weight_input])
    return list(t.shape) if t is not None and t.shape is not None else None


def _partial_cache(device: Device, order, fusion, weights, table, sparse_ok, by_idx) -> dict[int, bool]:
    """`weight_cache: partial` (the Edge TPU compiler): layers in graph order keep their weights in the
    on-chip cache while they fit; every later layer's weights stream on each inference."""
    if device.weight_cache != "partial" or device.onchip_capacity is None:
        return {}
    left, cached = device.onchip_capacity, {}
    for idx in order:
        if idx in fusion.anchor_of:
            continue
        roots = [r for m in [idx] + fusion.members.get(idx, []) for r in weights[m].roots if r in table.stored]
        need = device_weight_bytes(device, by_idx[idx]["stored_precision"], [
            WeightItem(table.stored[r].bytes_on(sparse_ok), table.stored[r].numel) for r in roots])
        cached[idx] = need <= left
        if cached[idx]:
            left -= need
    return cached


def _transfer_s(info: GraphInfo, device: Device) -> float:
    """Inputs and outputs over the host link (USB for a Coral stick or an NCS), at the device's width."""
    link = device.host_link_bytes_per_s
    if not link:
        return 0.0
    total = 0
    for name in list(info.graph_input_names) + sorted(info.graph_outputs):
        t = info.info(name)
        if t is None or t.numel is None:
            continue
        item = ActItem(t.numel, precision_of(t.elem_type), t.nbytes)
        total += device_act_bytes(device, item) or 0
    return total / link


def _weight_decode_mode(device, lw, act_precision) -> str | None:
    """"load" / "runtime" when the device decodes this layer's low-bit weights instead of
    computing in their precision (Device.weight_decode), else None."""
    if device is None or not lw.decode_ops or not narrower(lw.precision, act_precision):
        return None
    wd = device.weight_decode
    if wd.mode == "runtime" and lw.decode_ops & set(wd.runtime_ops):
        return "runtime"
    if wd.mode in ("runtime", "load"):
        return "load"
    return None


def _times(value, n: int):
    return None if value is None else value * n


def _subgraph_totals(totals: dict, flat: Flat, order: list[int], layers: list[dict], live, live_known) -> None:
    """What was estimated rather than counted, and which bodies were counted how."""
    estimated = Counter(l["op_type"] for l in layers if l["estimated"])
    totals.update(
        estimated_ops=dict(sorted(estimated.items())),
        estimated_macs=sum(l["macs"] or 0 for l in layers if l["estimated"]),
        estimated_op_count=sum(l["ops"] or 0 for l in layers if l["estimated"]),
        peak_activation_lower_bound=live_known.peak_bytes if live.unknown_tensors else None,
        peak_activation_unknown_tensors=len(live.unknown_tensors),
        subgraph_layers=sum(1 for idx in order if idx in flat.inlined),
        subgraph_choices=list(flat.choices),
    )


def _sum_or_none(values):
    return None if any(v is None for v in values) else sum(values)


def _totals(info, order, layers, table, sparse_ok, live, names, device) -> dict:
    counted = [l for l in layers if l["counted"]]
    uncounted = Counter(l["op_type"] for l in layers if not l["counted"])
    wtot = table.totals(sparse_ok)
    macs = sum(l["macs"] or 0 for l in counted)
    ops = sum(l["ops"] or 0 for l in counted)
    coverage = len(counted) / len(layers) if layers else 1.0
    totals = {
        "macs": macs,
        "params_count": sum(l["params_count"] for l in layers),
        "weight_bytes": wtot["weight_bytes"],
        "peak_activation_bytes": live.peak_bytes,
        "est_latency_ms": None,
        "est_energy_mj": None,
        "measured_latency_ms": None,
        "ops": ops,
        "weight_bytes_dense": wtot["weight_bytes_dense"],
        "weight_bytes_sparse": wtot["weight_bytes_sparse"],
        "weight_bytes_by_dtype": wtot["weight_bytes_by_dtype"],
        "sparse_weight_tensors": wtot["sparse_tensors"],
        "ops_per_weight_byte": ops / wtot["weight_bytes"] if wtot["weight_bytes"] else None,
        "peak_activation_at": names[order[live.peak_step]] if order and live.peak_step is not None else None,
        "peak_activation_tensors": [
            {"name": n, "bytes": info.info(n).nbytes if info.info(n) else None} for n in live.peak_tensors],
        "layers": len(layers),
        "coverage": coverage,
        "coverage_text": f"{coverage * 100:.0f} % of nodes",
        "uncounted_ops": dict(sorted(uncounted.items())),
        "input_shapes": info.input_shapes,
    }
    if device is None:
        return totals
    latencies = [l.get("est_latency_ms") for l in layers]  # estimated layers too: never a partial sum
    energies = [l.get("est_energy_mj") for l in layers]
    capacity = device.onchip_capacity
    weight_device = sum(l.get("device_weight_bytes") or 0 for l in layers)
    resident = capacity is not None and weight_device <= capacity
    main_precision = max(layers, key=lambda l: l.get("macs") or 0).get("compute_precision") if layers else None
    peak = device.peak_ops_per_s(main_precision) if main_precision else None
    bandwidth = device.dram_bytes_per_s
    totals.update(
        compute_precision=main_precision,
        ridge_ops_per_byte=peak / bandwidth if peak and bandwidth else None,
        est_latency_ms=None if any(v is None for v in latencies) else sum(latencies) + device.run_overhead_s * 1e3,
        est_energy_mj=None if any(v is None for v in energies) else sum(energies),
        est_compute_ms=sum(l.get("compute_ms") or 0 for l in layers if l.get("bound") == "compute"),
        est_memory_ms=sum(l.get("memory_ms") or 0 for l in layers if l.get("bound") == "memory"),
        compute_bound_layers=sum(1 for l in layers if l.get("bound") == "compute"),
        memory_bound_layers=sum(1 for l in layers if l.get("bound") == "memory"),
        fused_layers=sum(1 for l in layers if l.get("bound") == "fused"),
        spilling_layers=sum(1 for l in layers
                            if l.get("fits_onchip") is not True and l.get("bound") in ("compute", "memory")),
        dram_bytes=sum(l.get("dram_bytes") or 0 for l in layers),
        onchip_bytes=capacity,
        device_weight_bytes=weight_device,
        weights_fit_onchip=None if capacity is None else resident,
        weights_resident=resident,
        peak_activation_fits_onchip=None if capacity is None or totals["peak_activation_bytes"] is None
        else totals["peak_activation_bytes"] <= capacity,
        device_calibrated=device.calibrated,
        est_latency_band=band(device),
        assumptions=device.assumptions(),
    )
    return totals
