"""MobileNetV2 (Sandler et al. 2018), torchvision's topology, with random weights.

At width 1.0 / 224: 3,504,872 trainable parameters, 300.8 M MACs per image,
52 Conv, 52 BatchNormalization (unfolded), 35 Clip (ReLU6), 10 Add.

Node names: `features.{i}.{stage}.{op}`, where block i (1..17) has the stages
`expand` (1x1, absent in block 1), `dw` (3x3 depthwise) and `project` (1x1,
no activation), and `features.{i}.add` for the residual; `features.0` is the
stem and `features.18` the last 1x1 conv. Initializers are
`<node>.weight`, `<node>.bias`, `<node>.running_mean`, `<node>.running_var`.
"""

from __future__ import annotations

import onnx

from edgeopt.zoo._net import NetBuilder, Value

# expand ratio t, output channels c, repeats n, first stride s (paper, Table 2)
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of divisor, never more than 10% down (as in the paper)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def build_mobilenet_v2(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                       opset: int = 13, seed: int = 0,
                       calibration_images: int | None = None) -> onnx.ModelProto:
    """MobileNetV2 with seeded random weights and BN statistics measured on random images.

    calibration_images: how many standard-normal images the BN statistics are
    measured on (default: enough for this resolution; fewer builds faster).
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    net = NetBuilder(f"mobilenetv2-{width_mult}-{resolution}", resolution, opset, seed, calibration_images)
    in_ch = make_divisible(32 * width_mult)
    last_ch = make_divisible(1280 * max(1.0, width_mult))

    x = net.input()
    x = _conv_bn_relu6(net, x, "features.0", in_ch, kernel=3, stride=2)
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        out_ch = make_divisible(c * width_mult)
        for k in range(n):
            x = _inverted_residual(net, x, f"features.{index}", out_ch, s if k == 0 else 1, t)
            index += 1
    x = _conv_bn_relu6(net, x, f"features.{index}", last_ch, kernel=1)
    net.head(x, num_classes, pool="avgpool", flatten="flatten", fc="classifier")
    doc = (f"MobileNetV2 width {width_mult}, {resolution}x{resolution}, random weights (seed {seed}), "
           f"built by edgeopt.zoo; not trained.")
    return net.model(num_classes, doc)


def _conv_bn_relu6(net: NetBuilder, x: Value, name: str, out_ch: int, kernel: int,
                   stride: int = 1, groups: int = 1) -> Value:
    x = net.conv(x, f"{name}.conv", out_ch, kernel, stride, groups)
    x = net.batchnorm(x, f"{name}.bn")
    return net.relu6(x, f"{name}.relu6")


def _inverted_residual(net: NetBuilder, x: Value, name: str, out_ch: int, stride: int,
                       expand_ratio: int) -> Value:
    in_ch = x.channels
    hidden = int(round(in_ch * expand_ratio))
    identity = x
    if expand_ratio != 1:
        x = _conv_bn_relu6(net, x, f"{name}.expand", hidden, kernel=1)
    x = _conv_bn_relu6(net, x, f"{name}.dw", hidden, kernel=3, stride=stride, groups=hidden)
    x = net.conv(x, f"{name}.project.conv", out_ch, kernel=1)
    x = net.batchnorm(x, f"{name}.project.bn")
    if stride == 1 and in_ch == out_ch:
        x = net.add(identity, x, f"{name}.add")
    return x
