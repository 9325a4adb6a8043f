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
    if current < 11 <= target:
        _keep_resize_10_semantics(converted.graph)
    converted.ir_version = max(converted.ir_version, min_ir_version(target))
    return converted, f"opset upgraded {current} -> {target}"


def verified_upgrade(model: onnx.ModelProto, target: int, ctx) -> tuple[onnx.ModelProto, str]:
    """ensure_opset, then one probe sample through both models (verify/probe.py): onnx's adapters have
    changed what a model computes, and a pass must not build on that and report the change as its own
    error. OpsetUpgradeError when they differ."""
    from edgeopt.verify.probe import changed_on_probe

    work, note = ensure_opset(model, target)
    if note:
        changed = changed_on_probe(model, work, ctx)
        if changed:
            raise OpsetUpgradeError(f"onnx's version converter gives a model that {changed} ({note}); "
                                    f"upgrade the model to opset {target} yourself first")
    return work, note


def _keep_resize_10_semantics(graph: onnx.GraphProto) -> None:
    """onnx's Resize 10 -> 11 adapter leaves coordinate_transformation_mode unset, and opset 11's default
    (half_pixel) is not what Upsample and Resize 10 compute (asymmetric, nearest rounding down): a
    PyTorch opset-9 U-Net's bilinear upsampling moved its output to cosine 0.995. Every Resize of a
    graph converted from below opset 11 gets the old semantics written out."""
    for node in graph.node:
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            names = {a.name for a in node.attribute}
            if "coordinate_transformation_mode" not in names:
                node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
            mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
            if mode == b"nearest" and "nearest_mode" not in names:
                node.attribute.append(onnx.helper.make_attribute("nearest_mode", "floor"))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _keep_resize_10_semantics(attr.g)
            for sub in attr.graphs:
                _keep_resize_10_semantics(sub)
