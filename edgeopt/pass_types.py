"""What passes and the libraries they use (quant/, prune/, factorize/) share: parameters, notes, context, result.

It sits below both, so a library can describe what it did to a node (NodeNote)
or declare a parameter (param) without importing edgeopt.passes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx


def param(default: Any = dataclasses.MISSING, help: str = "", *, ge=None, gt=None, le=None, lt=None,
          default_factory: Any = dataclasses.MISSING):
    """A pass parameter with its help and numeric bounds (checked by the recipe validator)."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class NoParams:
    """For passes that take no parameters."""


@dataclass
class NodeNote:
    """What a pass did to one node, or why it left it alone (shown with --verbose and in JSON)."""

    node: str
    op_type: str
    action: str  # e.g. "folded", "fused", "quantized", "skipped"
    reason: str = ""
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"node": self.node, "op_type": self.op_type, "action": self.action}
        if self.reason:
            out["reason"] = self.reason
        if self.figures:
            out["figures"] = self.figures
        return out


@dataclass
class PassContext:
    """What a pass may see besides the model. Passes never see the profiler."""

    data: dict[str, np.ndarray] | None = None  # calibration inputs keyed by graph input name
    labels: np.ndarray | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    device: Any = None  # the recipe's first Device; only for parameters that ask (round_to: device)
    seed: int = 0
    fidelity: Any = None  # the recipe's FidelitySpec (output and metric that budgets look at); None: every output, cosine
    random_inputs: dict | None = None  # the recipe's random_inputs ({name: InputDistribution}): how to draw inputs without data


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    notes: list[NodeNote] = field(default_factory=list)
    summary: str = ""  # one line: "folded 35 BatchNormalization into Conv"
    folded_macs: int = 0  # MACs a lossless pass removed by folding constants (the MAC invariant allows them)


# A helper rewrite a library may run (fold BatchNorm before quantizing): (model, ctx) -> (model, label),
# label '' when nothing changed. Passes hand them in (edgeopt.passes.helper), so libraries never import passes.
Rewrite = Callable[[onnx.ModelProto, "PassContext"], tuple[onnx.ModelProto, str]]
