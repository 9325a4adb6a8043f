"""Cross-layer equalization math (Nagel et al. 2019, "Data-Free Quantization", section 4.1). Pure numpy.

For a producer layer W1 [C, ...] (bias b1) whose C output channels reach a consumer
layer W2 through a positively homogeneous activation f (f(x / s) = f(x) / s, s > 0),
dividing output channel c of W1 and b1 by s_c and multiplying the weights that read
input channel c of W2 by s_c leaves the composition unchanged. With r1_c and r2_c the
ranges (max |w|) of those channel slices, s_c = sqrt(r1_c / r2_c) makes both ranges
sqrt(r1_c * r2_c), which maximizes the summed per-channel precision of the two tensors
under one scale per tensor. A layer can sit in two pairs (conv -> depthwise -> conv):
pairs are equalized in order, a few rounds, until every scale of a round is ~1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Layer:
    """A convolution's weight [Cout, Cin / group, k...] and bias [Cout] (None: no bias), in float64."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    group: int = 1

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.group


@dataclass
class Outcome:
    """What equalize did: the product of the scales applied per pair (the producer's outputs were divided
    by it), how many rounds ran, and whether the last round's scales were all within tolerance of 1."""

    scales: list[np.ndarray] = field(default_factory=list)
    rounds: int = 0
    converged: bool = False


def output_ranges(w: np.ndarray) -> np.ndarray:
    """max |w| per output channel (axis 0)."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _grouped(w: np.ndarray, group: int) -> np.ndarray:
    """[Cout, Cin/g, k...] viewed as [g, Cout/g, Cin/g, k...]: input channel c sits in group c // (Cin/g)."""
    return w.reshape((group, w.shape[0] // group) + w.shape[1:])


def input_ranges(w: np.ndarray, group: int = 1) -> np.ndarray:
    """max |w| per input channel (of the Cin = Cin/g * g the layer reads), group/depthwise aware."""
    g = np.abs(_grouped(w, group))
    axes = (1,) + tuple(range(3, g.ndim))
    return g.max(axis=axes).reshape(-1)


def scale_outputs(layer: Layer, s: np.ndarray) -> None:
    """Divide output channel c of the weight and bias by s_c (in place)."""
    layer.weight = layer.weight / s.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    if layer.bias is not None:
        layer.bias = layer.bias / s


def scale_inputs(layer: Layer, s: np.ndarray) -> None:
    """Multiply the weights reading input channel c by s_c (in place)."""
    w = _grouped(layer.weight, layer.group)
    per_group = s.reshape((layer.group, 1, w.shape[2]) + (1,) * (w.ndim - 3))
    layer.weight = (w * per_group).reshape(layer.weight.shape)


def pair_scales(r1: np.ndarray, r2: np.ndarray, min_range: float) -> np.ndarray:
    """s_c = sqrt(r1_c / r2_c); 1 for a channel whose range in either tensor is below min_range times that
    tensor's largest (a dead or pruned channel: scaling it would divide by ~0)."""
    ok = (r1 > min_range * r1.max()) & (r2 > min_range * r2.max()) & (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1, dtype=np.float64)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


def equalize(layers: list[Layer], pairs: list[tuple[int, int]], rounds: int = 20, tolerance: float = 1e-3,
             min_range: float = 1e-6) -> Outcome:
    """Equalize each (producer, consumer) pair of layer indices, in the given order, for up to `rounds`
    rounds; stops early once every scale of a round is within `tolerance` of 1. Edits `layers` in place."""
    outcome = Outcome(scales=[np.ones(layers[p].weight.shape[0]) for p, _ in pairs])
    for _ in range(rounds):
        outcome.rounds += 1
        worst = 0.0
        for k, (p, q) in enumerate(pairs):
            s = pair_scales(output_ranges(layers[p].weight), input_ranges(layers[q].weight, layers[q].group),
                            min_range)
            scale_outputs(layers[p], s)
            scale_inputs(layers[q], s)
            outcome.scales[k] = outcome.scales[k] * s
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
        if worst <= np.log1p(tolerance):
            outcome.converged = True
            break
    return outcome


def precision(ranges: np.ndarray) -> float:
    """The paper's per-tensor precision of a weight: mean over channels of r_c / max_c r_c (1 = equalized)."""
    top = float(ranges.max())
    return float(np.mean(ranges / top)) if top > 0 else 1.0
