"""Finding the Convs a split can handle, their shapes, and the patches they see on calibration data."""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.factorize.geometry import ConvGeometry
from edgeopt.factorize.patches import sample_patches
from edgeopt.graph.activations import Stream
from edgeopt.graph.edit import const_array, single_consumer
from edgeopt.graph.shapes import infer_value_shapes, resolve_input_shapes
from edgeopt.verify.feeds import sample_count, take

CALIBRATION_SAMPLES = 256  # calibration inputs used at most (the first ones)
CALIBRATION_CHUNK = 32  # inputs per chunk while collecting patches (runs and layer groups stay in budget)
PATCHES_PER_LAYER = 8192  # sampled output positions per layer, at most
PATCH_FLOATS = 4 * 1024 * 1024  # ... and at most 16 MB of float32 patches per layer


@dataclass
class ConvLayer:
    """A group-1 2-D Conv with constant weights, as the splits see it."""

    node: ir.Node
    weight: np.ndarray  # [O, C, KH, KW] float32
    bias: np.ndarray | None  # [O]
    geometry: ConvGeometry
    in_hw: tuple[int, int] | None  # input height, width (None if shape inference could not tell)
    out_hw: tuple[int, int] | None
    batch: int = 1
    bn_follows: bool = False

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def input_name(self) -> str:
        return self.node.inputs[0].name

    def macs(self) -> int | None:
        o, c, kh, kw = self.weight.shape
        if self.out_hw is None:
            return None
        return self.batch * o * c * kh * kw * self.out_hw[0] * self.out_hw[1]


def matches(name: str, patterns: list[str]) -> bool:
    """Whether a node name is one of the patterns (exact names or shell wildcards like `conv1*`)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def value_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Static shape of every value the shape layer can resolve, with the inputs' dims fixed."""
    try:
        values = infer_value_shapes(model, resolve_input_shapes(model, input_shapes))
    except Exception:  # noqa: BLE001 - shapes are optional here: the MAC figures become null
        return {}
    return {name: shape for name, (_, shape) in values.items() if shape is not None}


def conv_layer(node: ir.Node, shapes: dict[str, list[int]]) -> ConvLayer | str:
    """The node as a ConvLayer, or the reason a split cannot take it."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return "Conv without a weight input"
    weight = const_array(node.inputs[1])
    if weight is None:
        return "W is not a constant"
    if weight.ndim != 4:
        return f"not a 2-D convolution (weight has rank {weight.ndim})"
    if weight.dtype != np.float32:
        return f"weight dtype is {weight.dtype}, only float32 is split"
    group = node.attributes.get_int("group", 1)
    if group != 1:
        return f"grouped convolution (group={group}): only group 1 is split"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = const_array(node.inputs[2])
        if bias is None:
            return "B is not a constant"
    attrs = {key: attr.value for key, attr in node.attributes.items()}
    kernel = tuple(weight.shape[2:])
    if attrs.get("kernel_shape") and tuple(attrs["kernel_shape"]) != kernel:
        return f"kernel_shape {tuple(attrs['kernel_shape'])} disagrees with the weight shape"
    geometry = ConvGeometry.from_attributes(kernel, attrs)
    in_shape = shapes.get(node.inputs[0].name)
    out_shape = shapes.get(node.outputs[0].name)
    consumer = single_consumer(node.outputs[0])
    return ConvLayer(node=node, weight=weight, bias=bias, geometry=geometry,
                     in_hw=tuple(in_shape[2:]) if in_shape and len(in_shape) == 4 else None,
                     out_hw=tuple(out_shape[2:]) if out_shape and len(out_shape) == 4 else None,
                     batch=(out_shape or in_shape or [1])[0],
                     bn_follows=consumer is not None and consumer.op_type == "BatchNormalization")


@dataclass
class LayerPatches:
    values: np.ndarray  # [S, C, KH, KW] float32
    images: np.ndarray  # [S] index of the calibration input each patch comes from


def collect_patches(model: onnx.ModelProto, layers: list[ConvLayer], feeds: dict[str, np.ndarray],
                    seed: int) -> dict[str, LayerPatches]:
    """Patches each layer sees on the calibration data, keyed by layer name.

    Runs the model on up to CALIBRATION_SAMPLES inputs in chunks, so memory
    stays bounded on big models, and samples up to PATCHES_PER_LAYER output
    positions per layer (fewer for wide layers). The positions depend only on
    the seed, the layer's name and its input shape, so two models with the
    same layer (the original and a partly split one) give patches at the
    same positions.
    """
    total = min(sample_count(feeds), CALIBRATION_SAMPLES)
    rngs = {layer.name: np.random.default_rng([seed, zlib.crc32(layer.name.encode())]) for layer in layers}
    wanted = sorted({layer.input_name for layer in layers})
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {layer.name: [] for layer in layers}
    budget = {layer.name: min(PATCHES_PER_LAYER, PATCH_FLOATS // layer.weight[0].size) for layer in layers}
    # a group of layer inputs at a time (each layer sees its chunks in order, as before), runs within budget
    stream = Stream(model, wanted, take(feeds, total), chunk=CALIBRATION_CHUNK,
                    what="collecting the patches each conv sees")
    for piece in stream:
        start, stop = piece.start, piece.stop
        for layer in layers:
            if layer.input_name not in piece.values:
                continue
            share = budget[layer.name] * stop // total - budget[layer.name] * start // total
            x = np.asarray(piece.values[layer.input_name], dtype=np.float32)
            picked, samples = sample_patches(x, layer.geometry, share, rngs[layer.name], return_samples=True)
            parts[layer.name].append((picked, samples + start))
    return {name: LayerPatches(np.concatenate([v for v, _ in p]), np.concatenate([i for _, i in p]))
            for name, p in parts.items()}
