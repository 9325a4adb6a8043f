"""Parameters shared by the weight-compression passes, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeopt.pass_types import param
from edgeopt.quant.weights import WEIGHT_OPS


@dataclass
class WeightPassParams:
    """The parameters quantize_weights and quantize_codebook share: which weights, what runs first.

    A pass's Params subclass this dataclass and add their own fields.
    """

    bias_correction: bool = param(
        False, "with calibration data: subtract each layer's mean output shift (dW . E[x]) from its bias "
               "(padding ignored; on the digits models it helps some layers and hurts others: off by default)")
    fold_batchnorm: bool = param(
        True, "fold BatchNormalization into the weights first (lossless), so BN parameters do not stay "
              "float and the folded weights are the ones rounded")
    biases: Literal["float32", "float16", "int8"] = param(
        "float16", "storage of the biases of the compressed layers: float16 (error far below the weights'; "
                   "one stays float32 if it exceeds float16's range), float32, or int8 with one scale per tensor")
    scale_dtype: Literal["auto", "float32", "float16"] = param(
        "float32", "storage of the scales (and codebooks). float16 saves ~1 % of an int8 model's bytes (opset 19 "
                   "for DequantizeLinear) but re-derives every integer from a rounded scale and decodes in float16, "
                   "which moves the DC gain of kernels whose taps cancel (PP-OCRv4 rec's text changed): ask for "
                   "it explicitly. auto: float16 for per-channel / block scales and codebooks if the model can be "
                   "upgraded, float32 for one per-tensor scale and for tensors float16 cannot hold")
    min_elements: int = param(128, "weights with fewer elements stay float", ge=0)
    op_types: list[str] = param(default_factory=lambda: list(WEIGHT_OPS),
                                help="operators whose weights are compressed")
    exclude: list[str] = param(default_factory=list, help="node names, globs or op types left in float")

    def __post_init__(self):
        unknown = [op for op in self.op_types if op not in WEIGHT_OPS]
        if unknown:
            raise ValueError(f"op_types: {unknown[0]!r} is not supported; choose from {', '.join(WEIGHT_OPS)}")
