"""The roofline cost model on a toy device with round numbers, checked against hand arithmetic.

Toy device: 100 GOPS fp32 (1e11 ops/s), 10 GB/s (1e10 B/s), 4 pJ per MAC,
100 pJ per DRAM byte, 1 pJ per SRAM byte, efficiency conv 0.5, gemm 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.devices import parse_device
from edgeopt.profile import profile_model

TOY = {
    "name": "toy", "precisions": ["fp32"], "peak_gops": {"fp32": 100}, "dram_gbps": 10,
    "efficiency": {"conv": 0.5, "depthwise": 0.25, "gemm": 1.0, "elementwise": 1.0},
    "fuses": ["Relu"], "energy_pj": {"mac": {"fp32": 4}, "dram_byte": 100, "sram_byte": 1},
    "layer_overhead_us": 0,
}


def toy(**changes):
    return parse_device({**TOY, **changes}, "toy.yaml")


def model(nodes, x_shape, inits):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def w(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def conv_relu():
    # x 1x4x8x8, W 8x4x3x3, pad 1 -> 1x8x8x8: MACs 512 x 36 = 18432, ops 36864; relu 512 ops
    return model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["y"], name="relu")], [1, 4, 8, 8], [w("w", [8, 4, 3, 3])])


def test_compute_bound_conv_with_fused_relu_on_chip():
    prof = profile_model(conv_relu(), toy(onchip_bytes=1 << 20))
    conv = next(l for l in prof.layers if l["name"] == "conv")
    ops = 36864 + 512  # the fused relu's ops run in the conv's epilogue
    assert conv["est_latency_ms"] == pytest.approx(ops / (100e9 * 0.5) * 1e3)
    assert conv["bound"] == "compute"
    assert conv["dram_bytes"] == 0  # weights resident on chip, activations fit
    working_set = 1152 + 1024 + 2048  # weights + x + relu output (conv output is never written)
    assert conv["working_set_bytes"] == working_set
    energy_pj = 18432 * 4 + 512 * 2 + 0 * 100 + working_set * 1  # MACs, other ops at half a MAC, bytes
    assert prof.totals["est_energy_mj"] == pytest.approx(energy_pj * 1e-9)
    assert prof.totals["est_latency_ms"] == pytest.approx(ops / 50e9 * 1e3)
    assert conv["arithmetic_intensity"] == pytest.approx(ops / working_set)


def test_memory_bound_fc_spills_without_onchip_memory():
    # Gemm x 1x256, W 256x64: MACs 16384, ops 32768 -> 0.32768 us at 100 GOPS
    # bytes: weights 65536 + x 1024 + y 256 = 66816 -> 6.6816 us at 10 GB/s
    fc = model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [1, 256], [w("w", [256, 64])])
    prof = profile_model(fc, toy())
    layer = prof.layers[0]
    assert layer["bound"] == "memory"
    assert layer["fits_onchip"] is None  # on-chip memory unknown: priced as spilling, reported as unknown
    assert layer["dram_bytes"] == 66816
    assert layer["est_latency_ms"] == pytest.approx(66816 / 10e9 * 1e3)
    assert layer["compute_ms"] == pytest.approx(32768 / 100e9 * 1e3)
    assert prof.totals["est_energy_mj"] == pytest.approx((16384 * 4 + 66816 * 100 + 66816 * 1) * 1e-9)
    assert prof.totals["ops_per_weight_byte"] == pytest.approx(32768 / 65536)


def test_weights_move_once_when_they_do_not_fit():
    # on-chip 4000 B: weights (1152) + x + out (3072) = 4224 > 4000, weights alone fit -> resident,
    # activations get 4000 - 1152 = 2848 < 3072 -> spill: DRAM bytes = 3072
    prof = profile_model(conv_relu(), toy(onchip_bytes=4000))
    conv = prof.layers[0]
    assert conv["fits_onchip"] is False
    assert conv["dram_bytes"] == 3072
    # 1000 B: weights do not fit: moved once, plus the activations
    prof = profile_model(conv_relu(), toy(onchip_bytes=1000))
    assert prof.layers[0]["dram_bytes"] == 1152 + 3072
    assert prof.totals["weights_fit_onchip"] is False


def test_overheads_add_per_layer_and_per_run():
    prof = profile_model(conv_relu(), toy(onchip_bytes=1 << 20, layer_overhead_us=10, run_overhead_us=100))
    compute_ms = (36864 + 512) / 50e9 * 1e3
    assert prof.totals["est_latency_ms"] == pytest.approx(compute_ms + 0.010 + 0.100)  # relu is fused: one layer


def test_int8_weights_on_fp16_device_compute_in_fp16():
    wq = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "ws")
    m = model([helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq"),
               helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
              [1, 4, 8, 8], [wq, scale])
    dev = parse_device({**TOY, "precisions": ["fp16"], "peak_gops": {"fp16": 200}, "onchip_bytes": None,
                        "energy_pj": {"mac": {"fp16": 1}, "dram_byte": 100, "sram_byte": 1}}, "toy16.yaml")
    prof = profile_model(m, dev)
    conv = prof.layers[0]
    assert conv["weight_precision"] == "int8"
    assert conv["compute_precision"] == "fp16"
    # activations take fp16 width on the device: x 256 x 2 + y 512 x 2; weights stay int8 (288 B),
    # the fp32 scale is held at fp16 (2 B)
    assert conv["dram_bytes"] == 288 + 2 + 512 + 1024
    assert conv["est_latency_ms"] == pytest.approx(max(36864 / (200e9 * 0.5), (288 + 2 + 1536) / 10e9) * 1e3)


def test_fp32_model_on_fp16_only_device_uses_fp16():
    dev = parse_device({**TOY, "precisions": ["fp16"], "peak_gops": {"fp16": 200}}, "toy16.yaml")
    prof = profile_model(conv_relu(), dev)
    conv = prof.layers[0]
    assert conv["compute_precision"] == "fp16"
    assert conv["device_weight_bytes"] == 288 * 2  # converted once to the compute width


def test_sparse_weights_only_on_a_device_that_keeps_them():
    values = np.zeros((8, 4, 3, 3), np.float32)
    values.reshape(-1)[:72] = 1.0
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], [1, 4, 8, 8],
              [numpy_helper.from_array(values, "w")])
    dense = profile_model(m, toy())
    sparse = profile_model(m, toy(sparse_weights=True))
    assert dense.totals["weight_bytes"] == 1152
    assert sparse.totals["weight_bytes"] == 72 * 4 + 36
    assert sparse.totals["weight_bytes_dense"] == 1152
    assert sparse.layers[0]["dram_bytes"] == 72 * 4 + 36 + 1024 + 2048


def test_without_a_device_estimates_are_null_not_zero():
    prof = profile_model(conv_relu(), None)
    assert prof.totals["est_latency_ms"] is None and prof.totals["est_energy_mj"] is None
    assert all(l["est_latency_ms"] is None for l in prof.layers)
    for key in ("macs", "params_count", "weight_bytes", "peak_activation_bytes", "est_latency_ms", "est_energy_mj"):
        assert key in prof.totals


def test_static_int8_qdq_runs_the_layer_in_int8():
    # x -Q-> int8 -DQ-> conv (int8 weights via DQ) -Q-> int8 -DQ-> y
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    wq = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dq_w"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"], name="dq_out")]
    m = model(nodes, [1, 4, 8, 8], [s, z, wq])
    dev = parse_device({**TOY, "precisions": ["int8", "fp32"], "peak_gops": {"fp32": 100, "int8": 400}}, "t.yaml")
    prof = profile_model(m, dev)
    by = {l["name"]: l for l in prof.layers}
    assert "dq_w" not in by  # weight decode is storage
    assert by["conv"]["compute_precision"] == "int8"
    assert by["conv"]["est_latency_ms"] == pytest.approx(
        max((36864 + 2 * 512) / (400e9 * 0.5), (288 + 256 + 512) / 10e9) * 1e3)  # + the fused quantize
    assert by["q_out"]["fused_into"] == "conv"
    assert by["dq_in"]["bound"] == "free" and by["dq_out"]["bound"] == "free"
    # live activations: x (1024 B fp32) and xq (256 B) at q_in; then xq + cq (512 B int8)
    assert prof.totals["peak_activation_bytes"] == 1024 + 256


def _weight_only_int8_conv():
    wq = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "wq")
    scale = numpy_helper.from_array(np.full(8, 0.5, np.float32), "ws")
    return model([helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=0),
                  helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                 [1, 4, 8, 8], [wq, scale])


@pytest.mark.parametrize("mode,precision,weight_bytes,latency_ms", [
    # native (the default): the layer computes in int8 at 4x the fp32 peak; weights stay int8 (288 + 32 B)
    ("native", "int8", 288 + 32, 36864 / (400e9 * 0.5) * 1e3),
    # load: decoded once to fp32 (288 x 4 B + the scales), computed in fp32
    ("load", "fp32", 1152 + 32, 36864 / (100e9 * 0.5) * 1e3),
    # runtime: decoded on every run: fp32 compute x slowdown 2, plus 10 us for the decode
    ("runtime", "fp32", 288 + 32, 2 * 36864 / (100e9 * 0.5) * 1e3 + 0.010),
])
def test_weight_only_int8_by_decode_mode(mode, precision, weight_bytes, latency_ms):
    dev = parse_device({**TOY, "precisions": ["int8", "fp32"], "peak_gops": {"fp32": 100, "int8": 400},
                        "onchip_bytes": 1 << 20,
                        "weight_decode": {"mode": mode, "runtime_ops": ["DequantizeLinear"],
                                          "slowdown": {"conv": 2}, "layer_us": 10}}, "t.yaml")
    conv = profile_model(_weight_only_int8_conv(), dev).layers[0]
    assert conv["weight_precision"] == "int8"
    assert conv["compute_precision"] == precision
    assert conv["device_weight_bytes"] == weight_bytes
    assert conv["est_latency_ms"] == pytest.approx(latency_ms)
    assert conv.get("weight_decode") == (None if mode == "native" else mode)


def test_roofline_region_against_the_ridge_point():
    # ridge = 1e11 ops/s / 1e10 B/s = 10 ops/byte.
    # conv_relu: intensity (36864 + 512) / 4224 = 8.85 < 10 -> memory region, though it is compute-bound
    # in time because it stays on chip; the FC: 32768 / 66816 = 0.49 -> memory region too.
    conv = next(l for l in profile_model(conv_relu(), toy(onchip_bytes=1 << 20)).layers if l["name"] == "conv")
    assert conv["bound"] == "compute" and conv["roofline_region"] == "memory"
    # at 10x the bandwidth the ridge is 1 op/byte and the conv sits above it
    fast = next(l for l in profile_model(conv_relu(), toy(onchip_bytes=1 << 20, dram_gbps=100)).layers
                if l["name"] == "conv")
    assert fast["roofline_region"] == "compute"
    assert profile_model(conv_relu(), None).layers[0].get("roofline_region") is None  # no device, no verdict


def test_one_analysis_for_several_devices_gives_the_same_profiles():
    from edgeopt.profile import profile_on_devices

    devices = [toy(onchip_bytes=1 << 20), toy(dram_gbps=100), None]
    together = profile_on_devices(conv_relu(), devices)
    for device, prof in zip(devices, together):
        alone = profile_model(conv_relu(), device)
        assert prof.totals == alone.totals and prof.layers == alone.layers
