"""ResNet-18 and ResNet-50 v1.5 (He et al. 2016), torchvision's topology, with random weights.

ResNet-50 v1.5 puts the stride of a downsampling bottleneck on its 3x3 conv.
At 224: ResNet-50 has 25,557,032 trainable parameters, 4.09 G MACs per image,
53 Conv, 53 BatchNormalization (unfolded), 49 Relu, 16 Add; ResNet-18 has
11,689,512 parameters, 1.81 G MACs, 20 Conv, 20 BatchNormalization, 8 Add.

Node and initializer names are torchvision's module names and state_dict
keys (`layer1.0.conv1`, `layer1.0.bn1.running_var`, `layer2.0.downsample.0`,
`fc.weight`); the activations of block `layerL.B` are `reluK` after the
K-th conv and `add` for the residual sum.
"""

from __future__ import annotations

import onnx

from edgeopt.zoo._net import NetBuilder, Value

_WIDTHS = (64, 128, 256, 512)


def build_resnet50(num_classes: int = 1000, opset: int = 13, seed: int = 0, resolution: int = 224,
                   calibration_images: int | None = None) -> onnx.ModelProto:
    """ResNet-50 v1.5 with seeded random weights and BN statistics measured on random images.

    calibration_images: how many standard-normal images the BN statistics are
    measured on (default: enough for this resolution; fewer builds faster).
    """
    return _build_resnet("resnet50", _bottleneck, 4, (3, 4, 6, 3), num_classes, opset, seed, resolution,
                         calibration_images)


def build_resnet18(num_classes: int = 1000, opset: int = 13, seed: int = 0, resolution: int = 224,
                   calibration_images: int | None = None) -> onnx.ModelProto:
    """ResNet-18 with seeded random weights and BN statistics measured on random images."""
    return _build_resnet("resnet18", _basic_block, 1, (2, 2, 2, 2), num_classes, opset, seed, resolution,
                         calibration_images)


def _build_resnet(name, block, expansion, layers, num_classes, opset, seed, resolution,
                  calibration_images) -> onnx.ModelProto:
    net = NetBuilder(name, resolution, opset, seed, calibration_images)
    x = net.input()
    x = net.conv(x, "conv1", 64, kernel=7, stride=2)
    x = net.batchnorm(x, "bn1")
    x = net.relu(x, "relu")
    x = net.maxpool(x, "maxpool", kernel=3, stride=2)
    for stage, (width, blocks) in enumerate(zip(_WIDTHS, layers), start=1):
        for b in range(blocks):
            stride = 2 if stage > 1 and b == 0 else 1
            x = block(net, x, f"layer{stage}.{b}", width, stride, expansion)
    net.head(x, num_classes, pool="avgpool", flatten="flatten", fc="fc")
    doc = (f"{name} (torchvision topology), {resolution}x{resolution}, random weights (seed {seed}), "
           f"built by edgeopt.zoo; not trained.")
    return net.model(num_classes, doc)


def _shortcut(net: NetBuilder, x: Value, name: str, out_ch: int, stride: int) -> Value:
    if stride == 1 and x.channels == out_ch:
        return x
    s = net.conv(x, f"{name}.downsample.0", out_ch, kernel=1, stride=stride)
    return net.batchnorm(s, f"{name}.downsample.1")


def _basic_block(net: NetBuilder, x: Value, name: str, width: int, stride: int, expansion: int) -> Value:
    y = net.relu(net.batchnorm(net.conv(x, f"{name}.conv1", width, 3, stride), f"{name}.bn1"), f"{name}.relu1")
    y = net.batchnorm(net.conv(y, f"{name}.conv2", width, 3), f"{name}.bn2")
    identity = _shortcut(net, x, name, width * expansion, stride)
    return net.relu(net.add(y, identity, f"{name}.add"), f"{name}.relu2")


def _bottleneck(net: NetBuilder, x: Value, name: str, width: int, stride: int, expansion: int) -> Value:
    y = net.relu(net.batchnorm(net.conv(x, f"{name}.conv1", width, 1), f"{name}.bn1"), f"{name}.relu1")
    y = net.relu(net.batchnorm(net.conv(y, f"{name}.conv2", width, 3, stride), f"{name}.bn2"), f"{name}.relu2")
    y = net.batchnorm(net.conv(y, f"{name}.conv3", width * expansion, 1), f"{name}.bn3")
    identity = _shortcut(net, x, name, width * expansion, stride)
    return net.relu(net.add(y, identity, f"{name}.add"), f"{name}.relu3")
