"""NetBuilder: emits an ONNX graph layer by layer and runs a calibration batch through it.

Each layer method adds the ONNX node(s) with seeded random weights and, in the
same step, computes in numpy (float64) what that layer outputs for a batch of
standard-normal images. A BatchNormalization therefore gets as running
mean / variance the statistics its input really has, and the activations of
the finished network stay in a sane range at any depth, as in a trained one.

Weights: convolutions He-normal with fan_out as torchvision initialises them
(std = sqrt(2 / (out_channels * kh * kw))), BN gamma log-normal around 1
(sigma 0.25) and beta normal around 0 (sigma 0.1), the classifier He-normal
with fan_in and a small random bias. All from one numpy Generator(seed), so a
seed gives the same model byte for byte (the calibration runs in float64, so a
different BLAS summation order practically never changes a float32 statistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgeopt

BN_EPSILON = 1e-5
BATCH_DIM = "N"
MIN_OPSET = 9

# Calibration: enough images that each channel of the last stage is seen at
# >= _CALIB_SAMPLES positions (BN statistics from too few samples are too
# narrow, an error that compounds with depth), within a budget of
# _CALIB_PIXELS image pixels (6 images at 224 x 224), and at least 2 images.
_CALIB_SAMPLES = 512
_CALIB_PIXELS = 6 * 224 * 224
_VAR_FLOOR = 1e-6
_IM2COL_BYTES = 64 << 20


@dataclass
class Value:
    """A tensor of the graph: its ONNX name and its calibration data, laid out (C, N, H, W)."""

    name: str
    data: np.ndarray

    @property
    def channels(self) -> int:
        return self.data.shape[0]


def default_calibration_images(resolution: int, total_stride: int = 32) -> int:
    """How many random images the BN statistics of a network of this total stride are measured on."""
    final = math.ceil(resolution / total_stride)
    need = math.ceil(_CALIB_SAMPLES / (final * final))
    return max(2, min(need, _CALIB_PIXELS // (resolution * resolution)))


class NetBuilder:
    """Builds one image classifier: input `input` [N, 3, H, W] -> output `logits` [N, classes]."""

    def __init__(self, name: str, resolution: int, opset: int, seed: int,
                 calibration_images: int | None = None):
        latest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= latest:
            raise ValueError(f"opset must be in [{MIN_OPSET}, {latest}], got {opset}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if calibration_images is None:
            calibration_images = default_calibration_images(resolution)
        if calibration_images < 2:
            raise ValueError(f"calibration_images must be >= 2, got {calibration_images}")
        self.name = name
        self.resolution = resolution
        self.opset = opset
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.calibration_images = calibration_images
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.params = 0  # trainable: conv / gemm weights and biases, BN gamma and beta
        self.macs = 0  # per image: conv and gemm multiply-accumulates
        self._names: set[str] = set()
        self._clip_bounds: tuple[str, str] | None = None

    # -- bookkeeping -------------------------------------------------------

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name in {self.name}: {name}")
        self._names.add(name)
        return name

    def _weight(self, name: str, array: np.ndarray, trainable: bool = True) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), self._claim(name)))
        if trainable:
            self.params += array.size
        return name

    def _node(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        """Add a node whose single output tensor is named like the node."""
        self.nodes.append(helper.make_node(op_type, inputs, [self._claim(name)], name=name, **attrs))
        return name

    # -- layers ------------------------------------------------------------

    def input(self, channels: int = 3) -> Value:
        shape = (channels, self.calibration_images, self.resolution, self.resolution)
        data = self.rng.standard_normal(shape)
        return Value(self._claim("input"), data)

    def conv(self, x: Value, name: str, out_channels: int, kernel: int,
             stride: int = 1, groups: int = 1) -> Value:
        """Conv without bias (a BatchNormalization follows), padding kernel // 2."""
        in_channels = x.channels
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        fan_out = out_channels * kernel * kernel
        shape = (out_channels, in_channels // groups, kernel, kernel)
        w = self.rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / fan_out))
        pad = kernel // 2
        w_name = self._weight(f"{name}.weight", w)
        attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
        if groups != 1:
            attrs["group"] = groups
        out = self._node("Conv", [x.name, w_name], name, **attrs)
        data = _conv2d(x.data, w.astype(np.float64), stride, pad, groups)
        self.macs += data[0, 0].size * out_channels * (in_channels // groups) * kernel * kernel
        return Value(out, data)

    def batchnorm(self, x: Value, name: str) -> Value:
        c = x.channels
        gamma = np.exp(self.rng.normal(0.0, 0.25, c))  # log-normal around 1
        beta = self.rng.normal(0.0, 0.1, c)
        mean, var = _population_stats(x.data)
        inputs = [
            x.name,
            self._weight(f"{name}.weight", gamma),
            self._weight(f"{name}.bias", beta),
            self._weight(f"{name}.running_mean", mean, trainable=False),
            self._weight(f"{name}.running_var", var, trainable=False),
        ]
        out = self._node("BatchNormalization", inputs, name, epsilon=BN_EPSILON)
        # Use the float32-rounded parameters, as onnxruntime will.
        g, b, m, v = (a.astype(np.float32).astype(np.float64) for a in (gamma, beta, mean, var))
        scale = g / np.sqrt(v + BN_EPSILON)
        data = x.data * scale[:, None, None, None]
        data += (b - m * scale)[:, None, None, None]
        return Value(out, data)

    def relu(self, x: Value, name: str) -> Value:
        return Value(self._node("Relu", [x.name], name), np.maximum(x.data, 0.0))

    def relu6(self, x: Value, name: str) -> Value:
        """ReLU6 as Clip(0, 6): min / max as inputs from opset 11, as attributes before."""
        if self.opset >= 11:
            if self._clip_bounds is None:
                self._clip_bounds = (
                    self._weight("relu6.min", np.array(0.0), trainable=False),
                    self._weight("relu6.max", np.array(6.0), trainable=False),
                )
            out = self._node("Clip", [x.name, *self._clip_bounds], name)
        else:
            out = self._node("Clip", [x.name], name, min=0.0, max=6.0)
        return Value(out, np.clip(x.data, 0.0, 6.0))

    def add(self, a: Value, b: Value, name: str) -> Value:
        return Value(self._node("Add", [a.name, b.name], name), a.data + b.data)

    def maxpool(self, x: Value, name: str, kernel: int = 3, stride: int = 2) -> Value:
        pad = kernel // 2
        out = self._node("MaxPool", [x.name], name, kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[pad] * 4)
        return Value(out, _maxpool2d(x.data, kernel, stride, pad))

    def head(self, x: Value, num_classes: int, pool: str, flatten: str, fc: str) -> Value:
        """GlobalAveragePool -> Flatten -> Gemm, the Gemm writing `logits`."""
        pooled = self._node("GlobalAveragePool", [x.name], pool)
        flat = self._node("Flatten", [pooled], flatten, axis=1)
        features = x.data.mean(axis=(2, 3)).T  # (N, C)
        c = features.shape[1]
        w = self.rng.standard_normal((num_classes, c), dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / c))
        b = self.rng.normal(0.0, 0.01, num_classes)
        inputs = [flat, self._weight(f"{fc}.weight", w), self._weight(f"{fc}.bias", b)]
        self._claim("logits")
        self.nodes.append(helper.make_node("Gemm", inputs, ["logits"], name=self._claim(fc), transB=1))
        self.macs += c * num_classes
        return Value("logits", features @ w.T.astype(np.float64) + b)

    # -- result ------------------------------------------------------------

    def model(self, num_classes: int, doc: str) -> onnx.ModelProto:
        r = self.resolution
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH_DIM, 3, r, r])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH_DIM, num_classes])],
            initializer=self.initializers,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            ir_version=helper.find_min_ir_version_for(opsets),
            producer_name="edgeopt.zoo",
            producer_version=edgeopt.__version__,
            doc_string=doc,
        )
        helper.set_model_props(model, {
            "zoo.name": self.name,
            "zoo.seed": str(self.seed),
            "zoo.params": str(self.params),
            "zoo.macs": str(self.macs),
        })
        return model


def _population_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance over images like these, from a few images (C, N, H, W).

    The variance is the within-image variance plus the variance of the image
    means with N - 1 degrees of freedom: the plain variance over all N * H * W
    values would miss (N - 1) / N of the image-to-image spread, which with a
    handful of images makes every BN too narrow, and the error compounds with
    depth.
    """
    image_means = x.mean(axis=(2, 3))
    within = x.var(axis=(2, 3)).mean(axis=1)
    between = image_means.var(axis=1, ddof=1)
    return image_means.mean(axis=1), np.maximum(within + between, _VAR_FLOOR)


# -- numpy reference layers, on (C, N, H, W) float64 arrays ------------------

def _windows(xp: np.ndarray, i: int, j: int, stride: int, ho: int, wo: int) -> np.ndarray:
    return xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    c, n, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    if groups == 1 and kh == kw == 1:
        return np.tensordot(w[:, :, 0, 0], _windows(xp, 0, 0, stride, ho, wo), axes=1)
    if groups == 1:  # im2col, a few images at a time to bound the column buffer
        per_image = c * kh * kw * ho * wo * 8
        step = max(1, _IM2COL_BYTES // per_image)
        w2 = w.reshape(o, c * kh * kw)
        out = np.empty((o, n, ho, wo))
        for start in range(0, n, step):
            part = xp[:, start:start + step]
            cols = np.empty((c, kh * kw, part.shape[1], ho, wo))
            for i in range(kh):
                for j in range(kw):
                    cols[:, i * kw + j] = _windows(part, i, j, stride, ho, wo)
            out[:, start:start + step] = (w2 @ cols.reshape(c * kh * kw, -1)).reshape(o, -1, ho, wo)
        return out
    if groups == c == o:  # depthwise
        out = np.zeros((o, n, ho, wo))
        for i in range(kh):
            for j in range(kw):
                out += _windows(xp, i, j, stride, ho, wo) * w[:, 0, i, j][:, None, None, None]
        return out
    raise NotImplementedError(f"grouped convolution with groups={groups} (only 1 or depthwise)")


def _maxpool2d(x: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    c, n, h, wd = x.shape
    ho = (h + 2 * pad - kernel) // stride + 1
    wo = (wd + 2 * pad - kernel) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    out = np.full((c, n, ho, wo), -np.inf)
    for i in range(kernel):
        for j in range(kernel):
            np.maximum(out, _windows(xp, i, j, stride, ho, wo), out=out)
    return out
