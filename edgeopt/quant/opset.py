"""Raising a model's opset with onnx's version converter, and saying clearly when it cannot be done."""

from __future__ import annotations

import onnx
from onnx import version_converter

# Minimum IR version for an opset (onnx.helper.VERSION_TABLE: release, ir, opset, ...).
_IR_FOR_OPSET = {}
for _release, _ir, _opset, *_ in onnx.helper.VERSION_TABLE:
    _IR_FOR_OPSET.setdefault(_opset, _ir)


class OpsetUpgradeError(Exception):
    """The model cannot be brought to the opset a quantization format needs."""


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def min_ir_version(opset: int) -> int:
    known = [o for o in _IR_FOR_OPSET if o <= opset]
    return _IR_FOR_OPSET[max(known)] if known else 3


def ensure_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, str]:
    """The model at opset >= target (a converted copy if needed) and a note ('' if unchanged).

    Raises OpsetUpgradeError naming the versions and the converter's reason.
    """
    current = default_opset(model)
    if current >= target:
        return model, ""
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises RuntimeError, ValidationError, ...
        reason = " ".join(str(exc).split())[:300]
        raise OpsetUpgradeError(
            f"the model is opset {current} and this format needs opset {target}, but onnx's version "
            f"converter cannot upgrade it ({reason})") from None
    converted.ir_version = max(converted.ir_version, min_ir_version(target))
    return converted, f"opset upgraded {current} -> {target}"
