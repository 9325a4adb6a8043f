"""quantize_static: int8 activations and weights in QDQ form, calibrated on the recipe's data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgeopt.errors import OutOfMemory
from edgeopt.graph.activations import run_chunk
from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, helper, param, register
from edgeopt.quant.calibrate import StaticQuantizer
from edgeopt.quant.opset import OpsetUpgradeError
from edgeopt.quant.prepare import prepare_float
from edgeopt.quant.runtime import ort_load_error
from edgeopt.quant.select import excluded
from edgeopt.quant.sensitivity import local_errors, quantized_nodes
from edgeopt.quant.timing import latency_quantiles
from edgeopt.verify.feeds import sample_count, take
from edgeopt.verify.fidelity import compare
from edgeopt.verify.inputs import random_inputs
from edgeopt.verify.runtime import make_session, run_batched, static_batch

HEAVY_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
SENSITIVITY_SAMPLES = 64
SENSITIVITY_ELEMENTS = 16 << 20  # ... and at most this many input elements (13 samples of 3x640x640): the
# ranking runs both models exposing every quantized tensor, a minute per 30 samples at that size
RANDOM_SAMPLES = 32  # random calibration inputs when the recipe has no data
EVAL_SAMPLES = 256  # fidelity against the float model is measured on this many samples of the data
LATENCY_SERIES = 2  # independent measurements (10th percentile and median) that must all show int8 faster


def _take(feeds: dict[str, np.ndarray], n: int, multiple: int) -> dict[str, np.ndarray]:
    """The first n samples (rounded down to a multiple of the model's fixed batch, at least one batch)."""
    total = sample_count(feeds)
    n = min(n, total)
    n = max(multiple, n - n % multiple)
    return take(feeds, n)


def _sensitivity_samples(feeds: dict[str, np.ndarray]) -> int:
    """SENSITIVITY_SAMPLES, fewer on big inputs (SENSITIVITY_ELEMENTS input elements at most, one sample at least)."""
    n = max(sample_count(feeds), 1)
    per_sample = max(sum(int(np.size(v)) for v in feeds.values()) // n, 1)
    return max(1, min(SENSITIVITY_SAMPLES, SENSITIVITY_ELEMENTS // per_sample))


def _random_shapes(shapes: dict[str, list[int]], batch: int) -> dict[str, list[int]]:
    """Shapes of random calibration inputs: RANDOM_SAMPLES samples (a multiple of the batch) on the
    inputs whose first dim is the batch; other inputs (states, scalars) keep their shape."""
    count = max(RANDOM_SAMPLES, batch)
    count -= count % batch
    return {k: [count] + list(v[1:]) if v and v[0] == batch else list(v) for k, v in shapes.items()}


def sorted_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's quantizer appends the QDQ nodes of If bodies' outer inputs after their readers
    (silero VAD): put every graph back in topological order, which the checker requires."""
    ir_model = to_ir(model)
    ir_model.graph.sort()
    return to_proto(ir_model)


def _check(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError
        return f"fails the ONNX checker: {' '.join(str(exc).split())[:200]}"
    problem = ort_load_error(model)
    return f"onnxruntime cannot load it: {problem}" if problem else None


@register
class QuantizeStatic(Pass):
    name = "quantize_static"
    summary = "int8 activations and weights in QDQ form (QLinearConv / QLinearMatMul in onnxruntime), calibrated"
    description = (
        "Static int8 quantization with onnxruntime.quantization (QDQ format, int8 per-channel weights, uint8 "
        "activations, int32 biases), calibrated on the recipe's data (minmax, percentile or entropy). "
        "First the model is prepared so the quantizer can do its job: opset raised to 13, Constant-node "
        "weights lifted to initializers, simplified, BatchNorm folded, nodes named. mode: auto then keeps in "
        "float the nodes whose quantization costs the most fidelity (greedy, by measured local error growth, "
        "until the outputs meet min_cosine and min_top1_agreement against the float model) and only keeps "
        "the int8 model if its measured onnxruntime latency here beats the input model by latency_margin "
        "(10th percentile, batch 1) with a median no worse, in each of two independent measurements "
        "(else retries with only Conv/Gemm/MatMul quantized, else leaves the model unchanged with the "
        "figures). Without data in the recipe it calibrates on seeded random inputs and says so.")
    lossless = False

    @dataclass
    class Params:
        calibration: Literal["minmax", "percentile", "entropy"] = param(
            "minmax", "how activation ranges are chosen from the calibration data")
        percentile: float = param(99.999, "the percentile kept (calibration: percentile)", gt=50, le=100)
        samples: int = param(256, "calibration samples taken from the recipe's data", ge=1)
        per_channel: bool = param(True, "one weight scale per output channel (else per tensor)")
        reduce_range: bool = param(
            True, "7-bit weights: x86 CPUs without VNNI saturate int16 sums of uint8 x int8 products, which "
                  "wrecks accuracy; false for full 8-bit weights on VNNI / ARM targets")
        activation_type: Literal["uint8", "int8"] = param("uint8", "activation storage (uint8: asymmetric)")
        mode: Literal["auto", "all"] = param(
            "auto", "auto: keep in float what costs fidelity or host latency; all: quantize every node it can")
        min_cosine: float = param(0.995, "auto: output cosine vs the float model the result must keep",
                                  ge=0, le=1)
        min_top1_agreement: float = param(0.99, "auto: top-1 agreement vs the float model (class scores)",
                                          ge=0, le=1)
        max_float_nodes: int = param(8, "auto: at most this many nodes put back in float for fidelity", ge=0)
        check_latency: bool = param(
            True, "auto: keep int8 only if it is faster here (false when this host is not the target)")
        latency_margin: float = param(0.10, "auto: int8 must be at least this fraction faster than the input (two "
                                      "sessions of one model differ by up to ~7% on a busy host)",
                                      ge=0, lt=1)
        exclude: list[str] = param(default_factory=list, help="node names, globs or op types left in float")

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        def unchanged(reason: str, notes=None) -> PassResult:
            notes = list(notes or []) + [NodeNote("(model)", "", "skipped", reason)]
            return PassResult(model, False, notes, summary=f"left unchanged: {reason}")

        decoders = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear",
                                                                  "QLinearConv", "QLinearMatMul")]
        if decoders:
            return unchanged(f"the model is already quantized ({decoders[0].op_type} {decoders[0].name!r}); "
                             "run quantize_static on the float model")
        try:
            prepared, prep_steps = prepare_float(model, ctx, [helper("simplify"), helper("fold_batchnorm")])
        except OpsetUpgradeError as exc:
            return unchanged(str(exc))
        fixed = static_batch(prepared)  # a model exported (or fixed) at batch 1 takes exactly 1
        multiple = fixed or 1
        if ctx.data:
            feeds, source = ctx.data, "the recipe's data"
        else:
            shapes = _random_shapes(ctx.input_shapes, multiple)
            feeds = random_inputs(prepared, shapes, ctx.seed).feeds if shapes else None
            source = "seeded random inputs (no data in the recipe)"
            if feeds is None:
                return unchanged("no calibration data and no input shapes to make random inputs")
        calib = _take(feeds, params.samples, multiple)  # calibrated in runs that fit in memory (graph.activations)

        names = {n.name: n.op_type for n in prepared.graph.node}
        user_excluded = {n: p for n, op in names.items() if (p := excluded(n, op, params.exclude))}
        auto_excluded: dict[str, float] = {}
        notes: list[NodeNote] = []
        op_types = None
        figures: dict = {"calibration": params.calibration, "samples": sample_count(calib),
                         "prepared": prep_steps}
        try:
            sq = StaticQuantizer(prepared, calib, params.calibration, params.percentile, params.per_channel,
                                 params.reduce_range, params.activation_type)
        except Exception as exc:
            return unchanged(f"cannot hand the model to onnxruntime's quantizer: {' '.join(str(exc).split())[:200]}")
        with sq:
            def quantize(extra_excluded, only=None):
                try:
                    q = sorted_graph(sq.quantize(sorted(set(user_excluded) | set(extra_excluded)), only))
                except OutOfMemory:  # the calibration cannot fit: one line and exit 2, not "the quantizer failed"
                    raise
                except Exception as exc:  # onnxruntime's quantizer raises many types
                    return None, f"onnxruntime's quantizer failed: {' '.join(str(exc).split())[:200]}"
                problem = _check(q)
                return (None, f"the quantized model {problem}") if problem else (q, None)

            q, problem = quantize([])
            if q is None:
                return unchanged(problem)
            if params.mode == "auto":
                evals = _take(feeds, EVAL_SAMPLES, multiple)
                # in runs that fit in memory: a whole batch of 256 at 640x640 is tens of GB
                chunk = run_chunk(model, evals, "measuring int8 fidelity against the float model")
                ref = run_batched(make_session(model), model, evals, chunk=chunk)

                def fidelity(candidate):
                    return compare(ref, run_batched(make_session(candidate), candidate, evals, chunk=chunk))

                def fid_ok(fid):
                    top1 = fid.get("top1_agreement")
                    return (fid.get("cosine") or 0) >= params.min_cosine and (
                        top1 is None or top1 >= params.min_top1_agreement)

                fid = fidelity(q)
                if not fid_ok(fid) and params.max_float_nodes:
                    # Rank the nodes once by the error their own quantization adds, then find the fewest
                    # of the worst to keep in float: all max_float_nodes first (if even that misses the
                    # budget, stop), then a binary search. A bounded number of quantize-and-measure
                    # rounds (about log2(max_float_nodes) + 1), whatever the model's size.
                    cands = sorted(quantized_nodes(q) - set(user_excluded))
                    errors = local_errors(prepared, q, _take(evals, _sensitivity_samples(evals), multiple), cands)
                    ranked = sorted(errors, key=lambda n: (-errors[n], n))[:params.max_float_nodes]
                    tried: dict[int, tuple] = {}

                    def attempt(k: int):
                        if k not in tried:
                            cand, problem = quantize(ranked[:k])
                            tried[k] = (cand, problem, fidelity(cand) if cand is not None else None)
                        return tried[k]

                    best = len(ranked)
                    cand, problem, cand_fid = attempt(best) if ranked else (None, None, None)
                    if cand is None and problem:
                        return unchanged(problem)
                    if cand is not None and fid_ok(cand_fid):
                        low, high = 0, best  # fid_ok fails at low (0 nodes), holds at high
                        while high - low > 1:
                            mid = (low + high) // 2
                            cand_mid, problem, fid_mid = attempt(mid)
                            if cand_mid is not None and fid_ok(fid_mid):
                                high = mid
                            else:
                                low = mid
                        best = high
                    if cand is not None:
                        q, _, fid = attempt(best)
                        auto_excluded = {n: errors[n] for n in ranked[:best]}
                figures.update({"cosine": fid.get("cosine"), "top1_agreement": fid.get("top1_agreement")})
                if not fid_ok(fid):
                    return unchanged(
                        f"int8 misses the fidelity budget even with {len(auto_excluded)} nodes in float "
                        f"(cosine {fid.get('cosine'):.4f} < {params.min_cosine} or top-1 agreement "
                        f"{fid.get('top1_agreement')} < {params.min_top1_agreement})")
                one = take(feeds, multiple)

                def faster(candidate):
                    """(fp32 p10, int8 p10, fp32 median, int8 median, int8 is faster by the margin on both).

                    Two independent interleaved series, and both must show the gain: sub-millisecond runs
                    on a shared host vary by +-10% from one series to the next, and one lucky series must
                    not make a model that is no faster look faster (figures: the mean of the two)."""
                    series = [latency_quantiles([model, candidate], one) for _ in range(LATENCY_SERIES)]
                    ok = all(q10 <= fp10 * (1 - params.latency_margin) and q50 <= fp50
                             for (fp10, fp50), (q10, q50) in series)
                    fp10, fp50, q10, q50 = (float(np.mean([s[i][j] for s in series])) for i, j in
                                            ((0, 0), (0, 1), (1, 0), (1, 1)))
                    return fp10, q10, fp50, q50, ok

                if params.check_latency:
                    lat_fp, lat_q, med_fp, med_q, ok = faster(q)
                    figures.update({"latency_fp32_ms": round(lat_fp, 4), "latency_int8_ms": round(lat_q, 4),
                                    "median_fp32_ms": round(med_fp, 4), "median_int8_ms": round(med_q, 4)})
                    if not ok:
                        heavy, _ = quantize(auto_excluded, HEAVY_OPS)
                        lat_h = None
                        if heavy is not None and fid_ok(fidelity(heavy)):
                            lat_fp2, lat_h, med_fp2, med_h, ok_h = faster(heavy)
                        if lat_h is not None and ok_h:
                            q, op_types = heavy, HEAVY_OPS
                            figures.update({"latency_fp32_ms": round(lat_fp2, 4), "latency_int8_ms": round(lat_h, 4),
                                            "median_fp32_ms": round(med_fp2, 4), "median_int8_ms": round(med_h, 4),
                                            "only": HEAVY_OPS})
                        else:
                            return unchanged(
                                f"int8 is not faster on this host: fp32 {lat_fp:.3f} ms vs int8 {lat_q:.3f} ms "
                                f"(10th percentile; medians {med_fp:.3f} vs {med_q:.3f} ms)"
                                + (f", {lat_h:.3f} ms with only {'/'.join(HEAVY_OPS)}" if lat_h else "")
                                + f"; needs a {params.latency_margin:.0%} gain and a median no worse")

        quantized = quantized_nodes(q)
        q_names = {n.name for n in q.graph.node}
        for node in prepared.graph.node:
            if node.name in quantized:
                notes.append(NodeNote(node.name, node.op_type, "quantized", "int8 QDQ"))
            elif node.name in user_excluded:
                notes.append(NodeNote(node.name, node.op_type, "skipped", f"excluded by {user_excluded[node.name]!r}"))
            elif node.name in auto_excluded:
                notes.append(NodeNote(node.name, node.op_type, "skipped",
                                      "auto: kept in float, its quantization cost the most fidelity",
                                      {"local_rel_error": round(auto_excluded[node.name], 5)}))
            elif op_types and node.op_type not in op_types and node.name in q_names:
                notes.append(NodeNote(node.name, node.op_type, "skipped",
                                      "auto: only Conv/Gemm/MatMul quantized (int8 was not faster otherwise)"))
            elif node.name not in q_names:
                notes.append(NodeNote(node.name, node.op_type, "absorbed",
                                      "removed by the quantizer (its range is the producer's int8 range)"))
            elif node.op_type in HEAVY_OPS:
                notes.append(NodeNote(node.name, node.op_type, "skipped",
                                      "onnxruntime's quantizer left it in float (input not quantizable)"))
        n_q = sum(1 for n in notes if n.action == "quantized")
        n_float = sum(1 for n in notes if n.action == "skipped")
        summary = (f"int8 QDQ: {n_q} nodes quantized, {n_float} kept in float; calibrated ({params.calibration}) "
                   f"on {figures['samples']} samples of {source}")
        if prep_steps:
            summary += f"; prepared: {', '.join(prep_steps)}"
        if params.mode == "auto" and params.check_latency:
            summary += (f"; host latency {figures['latency_fp32_ms']:.3f} -> {figures['latency_int8_ms']:.3f} ms "
                        "(10th percentile, batch 1)")
        notes.append(NodeNote("(model)", "", "quantized", summary, figures))
        return PassResult(q, True, notes, summary=summary)
