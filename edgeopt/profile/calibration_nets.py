"""The whole networks `edgeopt calibrate host` fits its figures on (profile/calibrate.py fit_networks).

Shapes unlike any exported architecture or corpus model, so those stay held out for scoring the fit:
the zoo builders at odd widths and resolutions, chains of tiny layers (what pins the per-layer and
per-run costs), single layers of each conv class, MobileNet v3 / EfficientNet-style blocks whose
gated activations (x * Sigmoid(x), x * HardSigmoid(x)) and squeeze-excitation gates are what prices
the element-wise class on real models (a lone Add says little about them), and ShuffleNet v2 units
(Split, Concat, the Reshape-Transpose-Reshape channel shuffle) for the data-movement class.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def training_networks() -> list[tuple[str, onnx.ModelProto]]:
    """What `calibrate host` fits whole-network figures on: the zoo builders at sizes unlike any export
    (so the corpus and the exported architectures stay held out), plus plain conv stacks."""
    from edgeopt.zoo import build_mobilenet_v2, build_resnet18

    nets = [("mobilenet_v2 x0.5 @160", build_mobilenet_v2(width_mult=0.5, resolution=160, calibration_images=2)),
            ("mobilenet_v2 x1.0 @192", build_mobilenet_v2(resolution=192, calibration_images=2)),
            ("mobilenet_v2 x0.35 @64", build_mobilenet_v2(width_mult=0.35, resolution=64, calibration_images=2)),
            ("resnet18 @64", build_resnet18(resolution=64, calibration_images=2)),
            ("resnet18 @128", build_resnet18(resolution=128, calibration_images=2)),
            ("resnet18 @192", build_resnet18(resolution=192, calibration_images=2))]
    rng = np.random.default_rng(7)
    # many layers with little work in each: what pins the per-layer and per-run costs (small models, RNNs)
    nets.append(("conv chain 24 x 3x3 16@16", _chain(rng, "conv", 24)))
    nets.append(("mlp 12 x 128", _chain(rng, "gemm", 12)))
    for label, cin, cout, hw, k, group in (("conv3x3 64@56", 64, 64, 56, 3, 1), ("pointwise 128@28", 128, 256, 28, 1, 1),
                                           ("depthwise 256@28", 256, 256, 28, 3, 256), ("grouped 128@28 g8", 128, 128, 28, 3, 8),
                                           ("conv5x5 32@56", 32, 64, 56, 5, 1)):
        w = (rng.normal(size=(cout, cin // group, k, k)) * 0.05).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[k // 2] * 4, group=group),
                 helper.make_node("Relu", ["y"], ["z"])]
        graph = helper.make_graph(nodes, label, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w")])
        nets.append((label, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    nets.append(("se-mbconv silu 4 x 24@40", _mbconv_stack(rng, "Sigmoid", blocks=4, c=24, hw=40)))
    nets.append(("se-mbconv hardswish 3 x 40@20", _mbconv_stack(rng, "HardSigmoid", blocks=3, c=40, hw=20)))
    nets.append(("shuffle units 4 x 88@20", _shuffle_stack(rng, blocks=4, c=88, hw=20)))
    return nets


def _chain(rng, kind: str, n: int) -> onnx.ModelProto:
    """n small layers, each followed by Relu: 3x3 convs of 16 channels at 16x16, or 128-wide Gemms."""
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        w = f"w{i}"
        if kind == "conv":
            inits.append(numpy_helper.from_array((rng.normal(size=(16, 16, 3, 3)) * 0.08).astype(np.float32), w))
            nodes.append(helper.make_node("Conv", [prev, w], [f"c{i}"], pads=[1, 1, 1, 1]))
        else:
            inits.append(numpy_helper.from_array((rng.normal(size=(128, 128)) * 0.08).astype(np.float32), w))
            nodes.append(helper.make_node("Gemm", [prev, w], [f"c{i}"], transB=1))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    shape = [1, 16, 16, 16] if kind == "conv" else [1, 128]
    graph = helper.make_graph(nodes, f"{kind} chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _weight(rng, inits: list, name: str, shape: tuple) -> str:
    """A He-scaled random initializer appended to `inits`; returns its name."""
    inits.append(numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name))
    return name


def _mbconv_stack(rng, gate: str, blocks: int, c: int, hw: int, expand: int = 4) -> onnx.ModelProto:
    """`blocks` inverted residuals: 1x1 expand, gated activation, depthwise 3x3, gated activation,
    squeeze-excitation (GlobalAveragePool, 1x1, Relu, 1x1, gate, Mul), 1x1 project, Add."""
    nodes, inits = [], []
    mid, squeeze = c * expand, max(c // 4, 8)

    def gated(x, name):
        nodes.append(helper.make_node(gate, [x], [f"{name}_g"]))
        nodes.append(helper.make_node("Mul", [x, f"{name}_g"], [f"{name}_a"]))
        return f"{name}_a"

    prev = "x"
    for i in range(blocks):
        p = f"b{i}"
        nodes.append(helper.make_node("Conv", [prev, _weight(rng, inits, f"{p}_ew", (mid, c, 1, 1))], [f"{p}_e"]))
        e = gated(f"{p}_e", f"{p}_e")
        nodes.append(helper.make_node("Conv", [e, _weight(rng, inits, f"{p}_dw", (mid, 1, 3, 3))], [f"{p}_d"], pads=[1] * 4, group=mid))
        d = gated(f"{p}_d", f"{p}_d")
        nodes.append(helper.make_node("GlobalAveragePool", [d], [f"{p}_s"]))
        nodes.append(helper.make_node("Conv", [f"{p}_s", _weight(rng, inits, f"{p}_s1w", (squeeze, mid, 1, 1))], [f"{p}_s1"]))
        nodes.append(helper.make_node("Relu", [f"{p}_s1"], [f"{p}_s1r"]))
        nodes.append(helper.make_node("Conv", [f"{p}_s1r", _weight(rng, inits, f"{p}_s2w", (mid, squeeze, 1, 1))], [f"{p}_s2"]))
        nodes.append(helper.make_node(gate, [f"{p}_s2"], [f"{p}_sg"]))
        nodes.append(helper.make_node("Mul", [d, f"{p}_sg"], [f"{p}_se"]))
        nodes.append(helper.make_node("Conv", [f"{p}_se", _weight(rng, inits, f"{p}_pw", (c, mid, 1, 1))], [f"{p}_p"]))
        nodes.append(helper.make_node("Add", [prev, f"{p}_p"], [f"{p}_y"]))
        prev = f"{p}_y"
    graph = helper.make_graph(nodes, f"se-mbconv {gate}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _shuffle_stack(rng, blocks: int, c: int, hw: int) -> onnx.ModelProto:
    """`blocks` ShuffleNet v2 units: Split in halves, one half through 1x1, depthwise 3x3, 1x1, Concat,
    channel shuffle (Reshape to groups of two, Transpose, Reshape back)."""
    nodes, half = [], c // 2
    inits = [numpy_helper.from_array(np.array([half, half], np.int64), "split"),
             numpy_helper.from_array(np.array([1, 2, half, hw, hw], np.int64), "grouped"),
             numpy_helper.from_array(np.array([1, c, hw, hw], np.int64), "flat")]

    prev = "x"
    for i in range(blocks):
        p = f"u{i}"
        nodes.append(helper.make_node("Split", [prev, "split"], [f"{p}_l", f"{p}_r"], axis=1))
        nodes.append(helper.make_node("Conv", [f"{p}_r", _weight(rng, inits, f"{p}_aw", (half, half, 1, 1))], [f"{p}_a"]))
        nodes.append(helper.make_node("Relu", [f"{p}_a"], [f"{p}_ar"]))
        nodes.append(helper.make_node("Conv", [f"{p}_ar", _weight(rng, inits, f"{p}_dw", (half, 1, 3, 3))], [f"{p}_d"], pads=[1] * 4, group=half))
        nodes.append(helper.make_node("Conv", [f"{p}_d", _weight(rng, inits, f"{p}_bw", (half, half, 1, 1))], [f"{p}_b"]))
        nodes.append(helper.make_node("Relu", [f"{p}_b"], [f"{p}_br"]))
        nodes.append(helper.make_node("Concat", [f"{p}_l", f"{p}_br"], [f"{p}_c"], axis=1))
        nodes.append(helper.make_node("Reshape", [f"{p}_c", "grouped"], [f"{p}_g"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_g"], [f"{p}_t"], perm=[0, 2, 1, 3, 4]))
        nodes.append(helper.make_node("Reshape", [f"{p}_t", "flat"], [f"{p}_y"]))
        prev = f"{p}_y"
    graph = helper.make_graph(nodes, "shuffle units", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
