"""What a pass is: a name, a summary, a typed parameter dataclass, and `apply`.

A pass declares its parameters once, as a dataclass whose fields carry
`help` and range metadata (see `param`). The recipe validator and
`edgeopt passes NAME` both read that one declaration.
"""

from __future__ import annotations

from typing import Any, ClassVar

import onnx

from edgeopt.pass_types import NodeNote, NoParams, PassContext, PassResult, Rewrite, param

__all__ = ["NodeNote", "NoParams", "Pass", "PassContext", "PassResult", "Rewrite", "param"]


class Pass:
    """Base class. Subclasses set the class attributes and implement `apply`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    description: ClassVar[str] = ""
    lossless: ClassVar[bool] = False  # lossless passes must match the previous stage to rounding
    advice: ClassVar[str] = ""  # what to try when the pass wrecks a model's outputs (pipeline warning)
    Params: ClassVar[type] = NoParams

    def apply(self, model: onnx.ModelProto, params: Any, ctx: PassContext) -> PassResult:
        raise NotImplementedError
