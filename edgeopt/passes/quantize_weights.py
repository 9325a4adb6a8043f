"""quantize_weights: int8 / int4 weights (per tensor, per channel, block-wise) decoded by DequantizeLinear."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, helper, param, register
from edgeopt.quant.decode import cast_mul_subgraph, dequantize_subgraph
from edgeopt.quant.driver import Compressed, Plan, graph_opset, run_weight_pass
from edgeopt.quant.params import WeightPassParams
from edgeopt.quant.qparams import QParams, compute_qparams, dequantize, float16_holds, quantize
from edgeopt.quant.select import node_label
from edgeopt.quant.weights import WeightSlot

OBJECTIVES = ("weight_bytes", "est_latency_ms", "est_energy_mj")


def required_opset(bits: int, granularity: str, scale_dtype: str, decode: str = "dequantize_linear") -> int:
    """The lowest opset whose DequantizeLinear (or Cast) can decode this format."""
    if decode == "cast_mul":
        return 21 if bits == 4 else 1  # Cast from INT4 / UINT4
    if bits == 4 or granularity == "block":
        return 21  # INT4 / UINT4 and block_size
    if scale_dtype == "float16":
        return 19  # float16 scales
    if granularity == "per_channel":
        return 13  # the axis attribute
    return 10


def quantize_slot(slot: WeightSlot, bits: int, symmetric: bool, granularity: str, block_size: int,
                  clip: str, scale_dtype: type):
    """(integers, QParams, decoded float32 in the original shape) for one weight."""
    w = slot.array
    if granularity == "block" and w.ndim >= 1:
        w2 = w.reshape(slot.block_shape)
        qp = compute_qparams(w2, bits, symmetric, axis=slot.block_axis, block_size=block_size, clip=clip,
                             scale_dtype=scale_dtype)
    elif granularity == "per_channel" and w.ndim >= 2:
        w2 = w
        qp = compute_qparams(w, bits, symmetric, axis=slot.channel_axis, clip=clip, scale_dtype=scale_dtype)
    else:
        w2 = w
        qp = compute_qparams(w, bits, symmetric, clip=clip, scale_dtype=scale_dtype)
    q = quantize(w2, qp)
    return q, qp, dequantize(q, qp).reshape(w.shape)


@dataclass
class Encoded:
    """One weight in one integer format, before it is written into a graph."""

    q: np.ndarray
    qp: QParams
    decoded: np.ndarray  # float32, the weight's shape: what the graph computes with
    note: str  # how the scales are stored, '' for the requested form

    @property
    def nbytes(self) -> int:
        """Stored bytes: the integers (int4 packed two per byte), scales and zero points."""
        zp = 0 if self.qp.signed else -(-self.qp.zero_point.size * self.qp.bits // 8)
        return -(-self.q.size * self.qp.bits // 8) + int(np.asarray(self.qp.scale).nbytes) + zp


def integer_encoder(params, bits: int):
    """encode(slot, opset) -> Encoded in `bits` with the pass's granularity, clip and scale storage,
    and the opsets (float32 scales, float16 scales) the format needs."""
    clip = params.clip if params.clip != "auto" else ("mse" if bits <= 4 else "minmax")
    half_opset = required_opset(bits, params.granularity, "float16", params.decode)
    f32_opset = required_opset(bits, params.granularity, "float32", params.decode)
    # auto: float16 scales where there are many of them (per channel, per block); one scale per
    # tensor is not worth an opset upgrade
    wants_half = params.scale_dtype == "float16" or (
        params.scale_dtype == "auto" and params.granularity != "per_tensor")

    def encode(slot: WeightSlot, opset: int) -> Encoded:
        half = wants_half and opset >= half_opset
        q, qp, decoded = quantize_slot(slot, bits, params.symmetric, params.granularity, params.block_size,
                                       clip, np.float32)
        if half and float16_holds(qp.scale):  # else tiny or huge channels: this tensor keeps float32
            # the integers are derived from the float16 scales, so the decode is self-consistent
            q, qp, decoded = quantize_slot(slot, bits, params.symmetric, params.granularity, params.block_size,
                                           clip, np.float16)
        note = ("" if qp.scale.dtype == np.float16 or not wants_half
                else ", float32 scales (float16 cannot hold them)" if half else ", float32 scales")
        return Encoded(q, qp, decoded, note)

    return encode, f32_opset, half_opset, wants_half


def write_encoded(graph, slot: WeightSlot, enc: Encoded, params, figures: dict | None = None,
                  reason: str = "") -> Compressed:
    build = cast_mul_subgraph if params.decode == "cast_mul" else dequantize_subgraph
    out, nbytes = build(graph, slot.name, enc.q, enc.qp, slot.array.shape)
    kind = "int" if enc.qp.signed else "uint"
    return Compressed(out, nbytes, enc.decoded,
                      reason or f"W {slot.name} -> {kind}{enc.qp.bits} {params.granularity}{enc.note}",
                      {"bits": enc.qp.bits, "granularity": params.granularity,
                       "scale_dtype": str(enc.qp.scale.dtype), **(figures or {})})


@register
class QuantizeWeights(Pass):
    name = "quantize_weights"
    summary = ("Store Conv/ConvTranspose/Gemm/MatMul/Gather and LSTM/GRU/RNN weights as int8 or int4, decoded "
               "by DequantizeLinear")
    description = (
        "Weight-only quantization: each weight becomes a real low-bit initializer (int8/uint8, or INT4/UINT4 "
        "packed two per byte) plus float scales (and zero points when asymmetric), decoded in the graph by "
        "DequantizeLinear, so plain onnxruntime runs the model and the file really shrinks. Activations "
        "stay float. Granularity: one scale per tensor, per output channel, or per block of block_size "
        "values along the reduction axis (Conv weights are viewed as (out, in*kh*kw) for blocks; an LSTM / "
        "GRU / RNN's W and R have a channel per gate row). "
        "Per-channel needs opset 13, float16 scales 19, int4 or blocks 21: the model is upgraded with "
        "onnx's version converter, and left unchanged with the reason when it cannot be (scale_dtype auto "
        "falls back to float32 scales when only opset 19 is out of reach). Biases stay float (float16 by "
        "default) and tensors smaller than min_elements stay float32.")
    lossless = False

    @dataclass
    class Params(WeightPassParams):
        bits: Literal[8, 4, "auto"] = param(
            8, "bits per weight: 8 (int8), 4 (int4, opset 21), or auto: per layer float / float16 / int8 / int4 "
               "minimizing `objective` within the fidelity budget (min_cosine, or max_accuracy_drop with labels)")
        symmetric: bool = param(True, "signed integers with zero point 0; false: unsigned with a zero point")
        granularity: Literal["per_tensor", "per_channel", "block"] = param(
            "per_channel", "one scale per tensor, per output channel, or per block of block_size values")
        block_size: int = param(32, "values per scale along the reduction axis (granularity: block)", ge=2)
        clip: Literal["auto", "minmax", "mse"] = param(
            "auto", "range per scale: the full min/max, or the clipped range with the least squared error; "
                    "auto: mse for 4 bits (outliers waste most of 15 levels), minmax for 8")
        decode: Literal["dequantize_linear", "cast_mul"] = param(
            "dequantize_linear",
            "dequantize_linear: the standard form int8/int4-aware runtimes keep compressed in memory "
            "(onnxruntime's CPU decodes it on every run: slower on this host); cast_mul: Cast and Mul of "
            "constants, which onnxruntime folds at load (fp32 speed here; only the file shrinks)")

        objective: Literal["weight_bytes", "est_latency_ms", "est_energy_mj"] = param(
            "weight_bytes", "bits auto: what the per-layer choice minimizes; est_latency_ms / est_energy_mj are "
                            "the profiler's per-layer estimates on the recipe's first device (an fp16 device "
                            "gains nothing from int8 compute it does not have)")
        min_cosine: float = param(
            0.99, "bits auto: least cosine of the outputs (the recipe's fidelity output; with its metric top1 "
                  "the top-1 agreement, with max_abs 1 - max abs error / output scale) against the pass's "
                  "input, on the calibration data "
                  "(seeded random inputs without data)", gt=0, le=1)
        max_accuracy_drop: float | None = param(
            None, "bits auto with labelled data: the budget is this top-1 accuracy drop (0.005 = half a point) "
                  "on the data instead of min_cosine", ge=0, lt=1)

        def __post_init__(self):
            super().__post_init__()
            if self.bits != "auto" and (self.objective != "weight_bytes" or self.min_cosine != 0.99
                                        or self.max_accuracy_drop is not None):
                raise ValueError("objective, min_cosine and max_accuracy_drop apply to bits: auto only")

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        if params.bits == "auto":
            return apply_auto(model, params, ctx)
        kind = f"{'int' if params.symmetric else 'uint'}{params.bits}"
        encode, f32_opset, half_opset, wants_half = integer_encoder(params, params.bits)
        build = cast_mul_subgraph if params.decode == "cast_mul" else dequantize_subgraph

        def compress(graph, slot: WeightSlot) -> Compressed:
            return write_encoded(graph, slot, encode(slot, graph_opset(graph)), params)

        return run_weight_pass(
            model, params, ctx, verb="quantized", compress=compress, build_int8_bias=build, fold=helper("fold_batchnorm"),
            target_opset=half_opset if params.scale_dtype == "float16" else f32_opset,
            preferred_opset=half_opset if params.scale_dtype == "auto" and wants_half else None,
            summary_head=lambda n: f"quantized {n} weights to {kind} {params.granularity}")


# -- bits: auto -----------------------------------------------------------------------------------

PROBE_ELEMENTS = 2 ** 19  # input values each single-layer sensitivity run sees (one run per layer and format):
PROBE_SAMPLES = 8  # a 320x320 page gets 1 sample, a 32x32 digit 8; that bounds the scan on large inputs
VERIFY_ELEMENTS = 2 ** 22  # input values each end-to-end check sees, at least VERIFY_SAMPLES samples (all
VERIFY_SAMPLES = 8  # 540 digits, both 320x320 pages); an accuracy budget uses every labelled sample
AUTO_CANDIDATES = ("float16", "int8", "int4_block", "int4")  # int4_block: the granularity: block form


def _feeds(model: onnx.ModelProto, ctx: PassContext) -> tuple[dict, str]:
    """Calibration samples (the recipe's data, else seeded random inputs) and where they come from."""
    from edgeopt.graph.shapes import resolve_input_shapes
    from edgeopt.verify.inputs import random_inputs

    if ctx.data:
        return ctx.data, "the calibration data"
    shapes = resolve_input_shapes(model, ctx.input_shapes)  # UserError when a dim is unknown
    return random_inputs(model, shapes, ctx.seed, free_batch=VERIFY_SAMPLES, distributions=ctx.random_inputs,
                         fill_fixed_batch=True).feeds, "seeded random inputs"


def _first(model: onnx.ModelProto, feeds: dict, n: int) -> dict:
    """The first n samples (a multiple of a fixed batch, at least one batch)."""
    from edgeopt.verify.feeds import sample_count, take
    from edgeopt.verify.runtime import static_batch

    fixed = static_batch(model) or 1
    total = sample_count(feeds)
    n = max(fixed, min(n, total) - min(n, total) % fixed)
    return feeds if n >= total else take(feeds, n)


def _samples_within(feeds: dict, elements: int, least: int, most: int | None = None) -> int:
    """How many samples hold about `elements` input values, within [least, most]."""
    from edgeopt.verify.feeds import sample_count

    per_sample = sum(np.size(v) for v in feeds.values()) / max(sample_count(feeds), 1)
    n = max(least, int(elements // max(per_sample, 1)))
    return n if most is None else min(most, n)


def _label_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Unnamed nodes named as the notes name them (<first output>), so profile layers match slots."""
    for node in model.graph.node:
        if not node.name and node.output:
            node.name = f"<{node.output[0]}>"
    return model


def _layer_costs(prepared: onnx.ModelProto, uniform: dict, slots: list[WeightSlot], key: str,
                 ctx: PassContext) -> dict[str, dict[str, float]]:
    """slot -> candidate -> the profiler's estimate (key: est_latency_ms / est_energy_mj) of its nodes on
    ctx.device, read from one profile of the model with every weight in that candidate's form."""
    from edgeopt.profile.profiler import profile_model  # the objective parameter asks for the device cost

    costs: dict[str, dict[str, float]] = {slot.name: {} for slot in slots}
    # a node reading several weights (an LSTM's W and R) shares its cost among them by size
    read = {}
    for slot in slots:
        for n in slot.nodes:
            read[node_label(n)] = read.get(node_label(n), 0) + slot.array.size
    for cand, model in {"float": prepared, **uniform}.items():
        layers = {}
        for layer in profile_model(_label_nodes(model), ctx.device, ctx.input_shapes or None).layers:
            layers.setdefault(layer["name"], layer)
        for slot in slots:
            values = [layers.get(node_label(n), {}).get(key) for n in slot.nodes]
            if all(v is not None for v in values):
                costs[slot.name][cand] = float(sum(v * slot.array.size / read[node_label(n)]
                                                   for v, n in zip(values, slot.nodes)))
    return costs


def apply_auto(model: onnx.ModelProto, params, ctx: PassContext) -> PassResult:
    """bits: auto (see edgeopt/quant/mixed.py for the search)."""
    from edgeopt.errors import UserError
    from edgeopt.quant.decode import float_const
    from edgeopt.quant.mixed import FLOAT, Budget, Layer, search
    from edgeopt.quant.probe import WeightProbe
    from edgeopt.verify.budget import where
    from edgeopt.graph.activations import run_chunk
    from edgeopt.verify.runtime import make_session, run_batched

    def unchanged(reason: str) -> PassResult:
        return PassResult(model, False, [NodeNote("(model)", "", "skipped", reason)], summary=f"left unchanged: {reason}")

    if params.objective != "weight_bytes" and ctx.device is None:
        return unchanged(f"objective {params.objective} needs a device: add `device:` to the recipe")
    try:
        feeds, source = _feeds(model, ctx)
    except UserError as exc:
        return unchanged(f"no calibration data and no input shapes for random inputs ({exc})")
    by_accuracy = params.max_accuracy_drop is not None and ctx.labels is not None and ctx.data is not None
    budget = Budget(params.min_cosine, params.max_accuracy_drop if by_accuracy else None,
                    ctx.labels if by_accuracy else None, ctx.fidelity, [o.name for o in model.graph.output])
    on = where(ctx.fidelity)
    # int4 in blocks of block_size along the reduction axis: on PP-OCRv4 det's 384x384 1x1 convs, 35 to
    # 340 times less output error than int4 per channel, for 1/8 more bytes (float32 scales)
    variants = {"int8": (params, 8), "int4": (params, 4),
                "int4_block": (dataclasses.replace(params, granularity="block"), 4)}
    if params.granularity == "block":
        del variants["int4_block"]  # int4 is already in blocks
    encoders = {c: integer_encoder(p, bits)[0] for c, (p, bits) in variants.items()}
    int8_opset = integer_encoder(params, 8)[1]
    int4_opset = max(integer_encoder(p, bits)[1] for p, bits in variants.values())
    build = cast_mul_subgraph if params.decode == "cast_mul" else dequantize_subgraph
    chosen: dict[str, str] = {}  # slot -> candidate, set by plan
    forms: dict[str, dict] = {}  # slot -> candidate -> Encoded or float16 array
    figures: dict[str, dict] = {}  # slot -> the figures its note carries
    extra: dict = {}

    def write(graph, slot: WeightSlot, cand: str, figs: dict | None = None) -> Compressed:
        form = forms[slot.name][cand]
        if cand == "float16":
            out, nbytes = float_const(graph, f"{slot.name}_fp16", form)
            return Compressed(out, nbytes, form.astype(np.float32), f"W {slot.name} -> float16", figs or {})
        return write_encoded(graph, slot, form, variants[cand][0], figs)

    def uniform_compress(cand: str):
        def compress(graph, slot: WeightSlot) -> Compressed:
            if cand not in forms[slot.name]:
                return Compressed(None, int(slot.array.nbytes), slot.array, f"W {slot.name} stays float")
            return write(graph, slot, cand)
        return compress

    def plan(graph_model, slots: list[WeightSlot]) -> Plan:
        opset = graph_opset(graph_model.graph)
        cands = [c for c in AUTO_CANDIDATES if c in ("float16", "int8") or (c in variants and opset >= int4_opset)]
        for slot in slots:
            f = {}
            half = slot.array.astype(np.float16)
            if np.all(np.isfinite(half)):  # else |w| > 65504: float16 cannot hold it
                f["float16"] = half
            for cand in cands[1:]:
                if cand == "int4_block" and slot.block_shape[slot.block_axis] <= params.block_size:
                    continue  # one block per channel: the same numbers as int4 per channel
                f[cand] = encoders[cand](slot, opset)
            forms[slot.name] = f
        prepared = ir.to_proto(graph_model)  # serialization only: the graph stays as it is
        if params.objective == "weight_bytes":
            costs = {s.name: {FLOAT: float(s.array.nbytes), **{c: float(2 * s.array.size if c == "float16" else
                                                                        forms[s.name][c].nbytes)
                                                                 for c in forms[s.name]}} for s in slots}
        else:
            uniform = {}
            for cand in cands:  # the same driver, every weight in one form, for the profiler
                built = run_weight_pass(prepared, dataclasses.replace(params, fold_batchnorm=False), ctx,
                                        target_opset=opset, verb="quantized", compress=uniform_compress(cand),
                                        summary_head=lambda n: "", build_int8_bias=build)
                if built.modified:
                    uniform[cand] = built.model
            costs = _layer_costs(prepared, uniform, slots, params.objective, ctx)
            for s in slots:  # a layer without a form (int4_block over a short channel) left it float there
                costs[s.name] = {c: v for c, v in costs[s.name].items() if c == FLOAT or c in forms[s.name]}
        layers = [Layer(s.name, {c: (v.astype(np.float32) if c == "float16" else v.decoded)
                                 for c, v in forms[s.name].items() if c in costs[s.name]},
                        costs[s.name]) for s in slots if FLOAT in costs[s.name]]
        originals = {s.name: s.array for s in slots}
        probe = WeightProbe(prepared, originals)
        sens = _first(prepared, feeds, _samples_within(feeds, PROBE_ELEMENTS, 1, PROBE_SAMPLES))
        check = feeds if budget.by_accuracy else _first(prepared, feeds,
                                                        _samples_within(feeds, VERIFY_ELEMENTS, VERIFY_SAMPLES))
        outcome = search(layers, originals, lambda sw: probe.run(sens, sw), lambda sw: probe.run(check, sw), budget)
        chosen.update(outcome.choice)
        extra.update(outcome=outcome, check=check, costs=costs)
        for layer in layers:
            figures[layer.name] = {
                "choice": outcome.choice[layer.name], "objective": params.objective,
                "cost": {c: layer.cost[c] for c in layer.cost},
                "loss_alone": {c: layer.loss[c] for c in layer.loss if c != FLOAT},  # 1 - cosine, this layer alone
                "loss_derived": [c for c, m in layer.measured.items() if not m],
                "out_of_reach": layer.out_of_reach}  # not run: a wider form alone breaks the budget
        counts = {c: sum(1 for v in outcome.choice.values() if v == c) for c in (FLOAT, *AUTO_CANDIDATES)}
        obj_before = sum(costs[n][FLOAT] for n in outcome.choice)
        obj_after = sum(costs[n][c] for n, c in outcome.choice.items())
        fid = outcome.fidelity
        measured = budget.shared().figure(fid, outcome.reference_accuracy)
        note = (f"{measured} ({on}) on {sample_count_of(check)} samples of {source}; {params.objective} "
                f"{obj_before:.4g} -> {obj_after:.4g} over these layers; {outcome.moves_taken} of "
                f"{outcome.moves_total} moves kept after {outcome.verifications} end-to-end checks; "
                f"{probe.runs} probe runs" + ("" if "int4" in cands else f"; no int4: the model stays at opset {opset}"))
        extra.update(note=note, counts=counts, fidelity=fid)
        if not outcome.moves_total:
            where = f" on {ctx.device.name}" if params.objective != "weight_bytes" else ""
            return Plan(unchanged=f"no format lowers {params.objective}{where} below float's for any layer "
                                  f"(every layer's figures are in the notes)",
                        notes=[NodeNote(node_label(n), n.op_type, "kept", f"W {s.name} stays float: no format is "
                                        f"cheaper by {params.objective}", figures.get(s.name, {}))
                               for s in slots for n in s.nodes])
        if all(v == FLOAT for v in outcome.choice.values()):
            notes = [NodeNote(node_label(n), n.op_type, "kept", f"W {s.name} stays float: no move fits the budget",
                              figures.get(s.name, {})) for s in slots for n in s.nodes]
            return Plan(unchanged=f"no layer can leave float within {budget.describe()} "
                                  f"(the least sensitive move alone: {_least(layers)}); {note}", notes=notes)
        return Plan(note=note)

    def compress(graph, slot: WeightSlot) -> Compressed:
        cand = chosen.get(slot.name, FLOAT)
        figs = figures.get(slot.name, {"choice": FLOAT})
        if cand == FLOAT:
            why = "the objective has no figure for it" if slot.name not in figures else "cheapest within the budget"
            return Compressed(None, int(slot.array.nbytes), slot.array, f"W {slot.name} stays float ({why})", figs)
        return write(graph, slot, cand, figs)

    def head(n: int) -> str:
        counts = extra.get("counts", {})
        mix = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        return f"mixed precision within {budget.describe()}, minimizing {params.objective}: {mix}"

    result = run_weight_pass(
        model, params, ctx, verb="quantized", compress=compress, build_int8_bias=build,
        fold=helper("fold_batchnorm"), target_opset=int8_opset, preferred_opset=int4_opset, summary_head=head,
        plan=plan)
    if not result.modified:
        return result
    # the model written, end to end against the pass's input (the search measured decoded weights)
    check = extra["check"]
    chunk = run_chunk(model, check, "checking the mixed-precision model")  # runs that fit in memory
    meter = budget.meter(run_batched(make_session(model), model, check, chunk=chunk))
    written = meter(run_batched(make_session(result.model), result.model, check, chunk=chunk))
    got = budget.shared().figure(written, meter.baseline_accuracy)
    if not budget.shared().met(written, meter.baseline_accuracy):
        return unchanged(f"the mixed model measures {got}, outside {budget.describe()} (the search's decoded "
                         "weights held it): nothing written")
    result.summary += f"; written model: {got} (budget measured on {on})"
    result.notes.append(NodeNote("(model)", "-", "measured", f"bits: auto budget on {on}", {
        "fidelity_on": {"output": budget.spec.output if budget.spec else None,
                        "metric": budget.spec.metric if budget.spec else "cosine"},
        "budget": budget.describe(), "search": extra.get("fidelity"),
        "written": {**{k: written.get(k) for k in ("score", "cosine", "top1_agreement", "max_abs_error", "accuracy",
                                                   "worst_output")},
                    "outputs": {n: f["cosine"] for n, f in written["outputs"].items()}},  # cosine per output
        "baseline_accuracy": meter.baseline_accuracy}))
    return result


def sample_count_of(feeds: dict) -> int:
    from edgeopt.verify.feeds import sample_count

    return sample_count(feeds)


def _least(layers) -> str:
    """The single-layer move with the least loss, in words."""
    best = min(((layer.loss.get(c, 2.0), layer.name, c) for layer in layers for c in layer.decoded), default=None)
    return "none" if best is None else f"{best[1]} to {best[2]}, cosine {1 - best[0]:.6f}"
