"""Calibrating the host profile: micro-benchmarks with onnxruntime, fitted efficiency factors.

Each micro-benchmark is a one-node ONNX model (dense 3x3 conv, depthwise 3x3
conv, batch-1 fully connected, element-wise Add) at a few sizes typical of
edge CNNs, timed with `measure_latency`. Two more runs fix the fixed costs:
a one-node model on a tiny tensor gives the per-run cost of `session.run`, a
chain of tiny nodes gives the per-node dispatch cost. Then, per op class,

    efficiency = sum(ops / peak) / sum(measured - fixed costs - memory time)

(a time-weighted fit, which is what a summed network latency needs); small
layers of each class then give its fixed cost per layer (set-up beyond the
generic node dispatch); and
DRAM bandwidth = bytes / time of an Add too large for the caches. The int8
peak is the fp32 peak times the measured speed-up of static-QDQ int8 convs
over the same fp32 convs. The weight-decode slow-downs compare each conv /
depthwise / gemm micro-benchmark with its weight stored int8 and decoded by
DequantizeLinear (weight-only quantization) against the float original. The fp32
peak is the static figure, or the best throughput measured here (a large
GEMM or a dense conv) when that is higher (turbo clocks beat the base clock
the static figure assumes). The result
goes to $EDGEOPT_CACHE_DIR/host.yaml (default ~/.cache/edgeopt/host.yaml),
which `load_device("host")` overlays on the static host profile.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgeopt.devices import Device, host_calibration_path
from edgeopt.devices.hostinfo import cpu_info, cpu_signature
from edgeopt.graph.io import write_atomic
from edgeopt.profile.calibration_nets import training_networks
from edgeopt.profile.measure import make_session, measure_latency, random_feeds

OPSET = 17
CONV_SHAPES = ((32, 56), (64, 28), (128, 14), (256, 7))  # channels, height = width
NETWORK_ROUNDS = 3  # interleaved timings of each whole training network


@dataclass
class Sample:
    op_class: str
    label: str
    ops: int
    bytes: int  # activation + weight bytes touched
    measured_ms: float


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "calib", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what onnxruntime of every supported version loads
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, shape, rng):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def conv_model(c_in: int, c_out: int, hw: int, group: int, rng) -> tuple[onnx.ModelProto, int, int]:
    w_shape = [c_out, c_in // group, 3, 3]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group)
    model = _model([node], [_vi("x", [1, c_in, hw, hw])], [_vi("y", [1, c_out, hw, hw])],
                   [_w("w", w_shape, rng), _w("b", [c_out], rng)])
    macs = c_out * hw * hw * (c_in // group) * 9
    nbytes = 4 * (c_in * hw * hw + c_out * hw * hw + math.prod(w_shape))
    return model, 2 * macs + c_out * hw * hw, nbytes


def qdq_conv_model(c: int, hw: int, rng) -> onnx.ModelProto:
    """Static int8 QDQ 3x3 conv (x -Q-DQ-> Conv(DQ(int8 W)) -Q-DQ-> y), as quantize_static writes it."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    wzero = numpy_helper.from_array(np.zeros(c, np.int8), "wz")
    wscale = numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws")
    wq = numpy_helper.from_array(rng.integers(-127, 127, (c, c, 3, 3)).astype(np.int8), "wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"])]
    return _model(nodes, [_vi("x", [1, c, hw, hw])], [_vi("y", [1, c, hw, hw])], [scale, zero, wzero, wscale, wq])


def with_dequantized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same one-node model with its weight stored int8 per channel and decoded by DequantizeLinear."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = out.graph.node[0]
    w_name = node.input[1]
    init = next(i for i in out.graph.initializer if i.name == w_name)
    w = numpy_helper.to_array(init)
    axis = 0
    scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127 + 1e-12
    q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    out.graph.initializer.remove(init)
    out.graph.initializer.extend([numpy_helper.from_array(q, w_name + "_q"),
                                  numpy_helper.from_array(scale.astype(np.float32), w_name + "_s"),
                                  numpy_helper.from_array(np.zeros(w.shape[0], np.int8), w_name + "_z")])
    decode = helper.make_node("DequantizeLinear", [w_name + "_q", w_name + "_s", w_name + "_z"], [w_name], axis=axis)
    out.graph.node.insert(0, decode)
    return out


def gemm_model(k: int, n: int, rows: int, rng, trans_b: bool = True) -> tuple[onnx.ModelProto, int, int]:
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1 if trans_b else 0)
    model = _model([node], [_vi("x", [rows, k])], [_vi("y", [rows, n])], [_w("w", [n, k], rng), _w("b", [n], rng)])
    return model, 2 * rows * n * k + rows * n, 4 * (rows * k + n * k + rows * n)


def add_model(numel: int, chain: int = 1) -> tuple[onnx.ModelProto, int, int]:
    nodes, prev = [], "x"
    for i in range(chain):
        out = "y" if i == chain - 1 else f"t{i}"
        nodes.append(helper.make_node("Add", [prev, "x"], [out]))
        prev = out
    model = _model(nodes, [_vi("x", [1, numel])], [_vi("y", [1, numel])], [])
    return model, numel * chain, 12 * numel * chain


def _feeds(model: onnx.ModelProto, rng) -> dict:
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _time(model, rng, budget: float) -> float:
    return measure_latency(model, _feeds(model, rng), warmup=2, min_runs=3, max_seconds=budget)


def calibrate_host(budget_s: float = 0.6, progress=None, write: bool = True) -> dict:
    """Run the micro-benchmarks, fit the host factors, store them; returns the stored mapping.

    `budget_s` is the timing budget per micro-benchmark (the whole run is ~20 of them).
    """
    import onnxruntime

    say = progress or (lambda message: None)
    rng = np.random.default_rng(0)
    base = _static_host()
    peak = base.peak_ops_per_s("fp32")

    say("calibrate: fp32 peak (large GEMM)")
    model, ops, _ = gemm_model(1024, 1024, 256, rng)
    gemm_rate = ops / (_time(model, rng, budget_s) * 1e-3)
    measured_peak = None
    if gemm_rate > peak:  # the static figure assumed the base clock; boost clocks beat it
        peak = measured_peak = gemm_rate

    say("calibrate: fixed costs (session.run, per node)")
    t_one = _time(add_model(16, 1)[0], rng, budget_s)
    chain = 32
    t_chain = _time(add_model(16, chain)[0], rng, budget_s)
    node_us = max((t_chain - t_one) / (chain - 1) * 1e3, 0.0)
    run_us = max(t_one * 1e3 - node_us, 0.0)

    say("calibrate: DRAM bandwidth (Add larger than the caches)")
    big = max(int((base.onchip_capacity or 32 << 20) * 1.5 / 12), 1 << 20)
    model, _, nbytes = add_model(big)
    t_big = _time(model, rng, budget_s)
    kernel_s = max(t_big * 1e-3 - (run_us + node_us) * 1e-6, 1e-9)
    dram_gbps = nbytes / kernel_s / 1e9

    benches = {
        "conv": [conv_model(c, c, hw, 1, rng) for c, hw in CONV_SHAPES],
        "depthwise": [conv_model(96, 96, 56, 96, rng), conv_model(192, 192, 28, 192, rng),
                      conv_model(384, 384, 14, 384, rng), conv_model(960, 960, 7, 960, rng)],
        "gemm": [gemm_model(1280, 1000, 1, rng, trans_b=True), gemm_model(512, 10, 1, rng, trans_b=True),
                 gemm_model(256, 256, 64, rng, trans_b=True)],
        "elementwise": [add_model(64 * 56 * 56), add_model(128 * 28 * 28), add_model(256 * 14 * 14)],
    }
    samples: list[Sample] = []
    efficiency = {}
    fixed_s = (run_us + node_us) * 1e-6
    timed = {}
    for op_class, models in benches.items():
        say(f"calibrate: {op_class}")
        timed[op_class] = []
        for model, ops, nbytes in models:
            measured = _time(model, rng, budget_s)
            samples.append(Sample(op_class, _label(model), ops, nbytes, measured))
            weights = sum(math.prod(i.dims) * 4 for i in model.graph.initializer)
            mem_s = weights / (dram_gbps * 1e9) if weights > (base.onchip_capacity or 0) else 0.0
            timed[op_class].append((ops, max(measured * 1e-3 - fixed_s - mem_s, 1e-7)))
    best_conv = max(ops / seconds for ops, seconds in timed["conv"])
    if best_conv > peak:  # a dense conv beat the assumed peak: the clock runs above the base figure
        peak = measured_peak = best_conv
    for op_class, pairs in timed.items():
        ideal = sum(ops for ops, _ in pairs) / peak
        spent = sum(seconds for _, seconds in pairs)
        efficiency[op_class] = round(min(max(ideal / spent, 1e-4), 1.0), 5)

    # fixed cost per layer of each class beyond the generic node dispatch: small layers, where
    # the kernel's set-up (buffers, packing the input) costs more than its arithmetic
    small = {
        "conv": [conv_model(8, 8, 8, 1, rng), conv_model(16, 16, 8, 1, rng), conv_model(32, 32, 8, 1, rng)],
        "depthwise": [conv_model(32, 32, 8, 32, rng), conv_model(64, 64, 8, 64, rng),
                      conv_model(128, 128, 4, 128, rng)],
        "gemm": [gemm_model(64, 10, 1, rng), gemm_model(128, 64, 1, rng), gemm_model(256, 32, 1, rng)],
        "elementwise": [add_model(1024), add_model(4096), add_model(16384)],
    }
    class_overhead = {}
    for op_class, models in small.items():
        say(f"calibrate: {op_class}, small layers")
        extra = []
        for model, ops, _ in models:
            measured = _time(model, rng, budget_s)
            samples.append(Sample(op_class, _label(model) + " (small)", ops, 0, measured))
            extra.append(measured * 1e-3 - fixed_s - ops / (peak * efficiency[op_class]))
        class_overhead[op_class] = round(max(float(np.median(extra)) * 1e6, 0.0), 3)

    say("calibrate: weights decoded by DequantizeLinear on every run (weight-only int8)")
    slowdown = {}
    for op_class in ("conv", "depthwise", "gemm"):
        float_ms = sum(x.measured_ms for x in samples if x.op_class == op_class)
        decoded_ms = sum(_time(with_dequantized_weights(model), rng, budget_s) for model, _, _ in benches[op_class])
        slowdown[op_class] = round(max(decoded_ms / float_ms, 1.0), 3) if float_ms > 0 else 1.0
    # the fixed part: small convs, where the decode node costs more than the slower kernel
    fixed = []
    for c, hw in ((32, 16), (64, 8), (128, 4)):
        model = conv_model(c, c, hw, 1, rng)[0]
        float_ms = _time(model, rng, budget_s)
        decoded_ms = _time(with_dequantized_weights(model), rng, budget_s)
        fixed.append(decoded_ms - float_ms * slowdown["conv"])
    decode_layer_us = round(max(float(np.median(fixed)) * 1e3, 0.0), 3)

    say("calibrate: int8 (static QDQ conv against the same fp32 conv)")
    fp32_conv = sum(x.measured_ms for x in samples if x.op_class == "conv")
    int8_conv = sum(_time(qdq_conv_model(c, hw, rng), rng, budget_s) for c, hw in CONV_SHAPES)
    int8_speedup = fp32_conv / int8_conv if int8_conv > 0 else 1.0

    result = {
        "cpu": cpu_signature(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "onnxruntime": onnxruntime.__version__,
        "budget_s": budget_s,
        "peak_gops_fp32": None if measured_peak is None else round(measured_peak / 1e9, 3),
        "gemm_gops_measured": round(gemm_rate / 1e9, 3),
        "int8_speedup": round(int8_speedup, 4),
        "weight_decode_slowdown": slowdown,
        "weight_decode_layer_us": decode_layer_us,
        "efficiency": efficiency,
        "dram_gbps": round(dram_gbps, 3),
        "layer_overhead_us": round(node_us, 3),
        "class_overhead_us": class_overhead,
        "run_overhead_us": round(run_us, 3),
        "samples": [{"class": s.op_class, "what": s.label, "ops": s.ops, "bytes": s.bytes,
                     "measured_ms": round(s.measured_ms, 5)} for s in samples],
        "machine": cpu_info()["model"],
    }
    if write:
        path = host_calibration_path()
        write_atomic(path, yaml.safe_dump(result, sort_keys=False).encode())
        say("calibrate: whole networks (zoo MobileNetV2 / ResNet-18 at several sizes), least squares")
        result.update(fit_networks(budget_s))
        write_atomic(path, yaml.safe_dump(result, sort_keys=False).encode())
        result["path"] = str(path)
    return result


def fit_networks(budget_s: float) -> dict:
    """Time the training networks here and fit the host's free figures to them (devices.fitting)."""
    import tempfile
    from pathlib import Path

    from edgeopt.devices import load_device
    from edgeopt.devices.fitting import TermCache, fit
    from edgeopt.devices.measurements import Measurement
    rows, labels, timed = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in training_networks():
            labels.append(label)
            path = Path(tmp) / f"{label.replace(' ', '_').replace('@', 'at')}.onnx"
            onnx.save(model, path)
            session = make_session(model)
            feeds = random_feeds(session, {})  # a dynamic dim (the builders' batch "N") runs at 1, as profile does
            timed.append((path, session, feeds, []))
        # interleaved rounds, the fastest round's median: another job sharing the core (or its cache) for a
        # while slows one round of one network, not the fit
        for _ in range(NETWORK_ROUNDS):
            for _, session, feeds, times in timed:
                times.append(measure_latency(session, feeds, max_seconds=max(budget_s, 0.1)))
        rows = [Measurement(latency_ms=min(times), model=str(path)) for path, _, _, times in timed]
        device = load_device("host")  # the micro-benchmark figures just stored: the fit's priors
        result = fit(device, rows, TermCache(tmp))
    values = result.values
    return {
        "efficiency": {k.split(".", 1)[1]: round(v, 5) for k, v in values.items() if k.startswith("efficiency.")},
        "dram_gbps": round(values["dram_gbps"], 3),
        "layer_overhead_us": round(values["layer_overhead_us"], 3),
        "run_overhead_us": round(values["run_overhead_us"], 3),
        "network_fit": {"rows": [{"model": label, "measured_ms": round(r.latency_ms, 4), "fitted_ms": round(p, 4)}
                                 for label, r, p in zip(labels, rows, result.predicted_ms)],
                        "error": result.stats},
    }



def _static_host() -> Device:
    from edgeopt.devices import DEVICE_DIR, _load_file

    return _load_file(DEVICE_DIR / "host.yaml")


def _label(model: onnx.ModelProto) -> str:
    node = model.graph.node[0]
    shape = "x".join(str(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    extra = f" group={group}" if group > 1 else ""
    return f"{node.op_type} {shape}{extra}"
