"""Getting a float model ready for static quantization: opset >= 13, weights as initializers,
simplified, BatchNorm folded, every node named.

onnxruntime's quantizer alone fails on real exports: Constant-node weights
("Expected ... to be an initializer"), per-channel DequantizeLinear with an
axis below opset 13 (an invalid model), and BNs left between Conv and Relu
that block the QLinearConv fusion (models 2-3x slower and larger than fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.pass_types import PassContext, Rewrite
from edgeopt.quant.opset import verified_upgrade
from edgeopt.quant.runtime import ort_load_error

STATIC_MIN_OPSET = 13


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node, and every node after the first of a repeated name, a unique name
    (exclusions and notes refer to nodes by name; converters name what they insert after them)."""
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = set(filter(None, names))
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{node.output[0] if node.output else i}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
        seen.add(name)
    return out


def prepare_float(model: onnx.ModelProto, ctx: PassContext,
                  steps: Sequence[Rewrite]) -> tuple[onnx.ModelProto, list[str]]:
    """The prepared float model and what was done: opset 13, Constant weights lifted, then `steps`
    (the calling pass hands in simplify and fold_batchnorm). Raises OpsetUpgradeError when opset 13
    is out of reach, or when onnx's converter changes what the model computes.

    Each step is kept only if its result still loads in onnxruntime; a step that fails is
    reported and skipped (the model stays valid, only less prepared).
    """
    done = []
    work, note = verified_upgrade(model, STATIC_MIN_OPSET, ctx)
    if note:
        done.append(note)
    lifted = to_proto(to_ir(work))
    if any(n.op_type == "Constant" for n in work.graph.node):
        done.append("Constant weights lifted to initializers")
    work = lifted
    for step in steps:
        try:
            candidate, label = step(work, ctx)
        except Exception as exc:  # a helper pass failing must not sink the quantization
            done.append(f"{step.__name__} skipped ({' '.join(str(exc).split())[:120]})")
            continue
        if label and ort_load_error(candidate) is None:
            work = candidate
            done.append(label)
    return name_nodes(work), done


def fold_batchnorm_first(model: onnx.ModelProto, ctx: PassContext, fold: Rewrite) -> tuple[onnx.ModelProto, str]:
    """Fold BatchNormalization into the weights before they are quantized (lossless), so the BN
    parameters do not stay float and the folded weights are the ones rounded. ('' if nothing folded.)"""
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model, ""
    try:
        folded, label = fold(model, ctx)
    except Exception as exc:  # the helper pass failing must not sink the quantization
        return model, f"fold_batchnorm skipped ({' '.join(str(exc).split())[:120]})"
    if not label or ort_load_error(folded) is not None:
        return model, ""
    left = sum(n.op_type == "BatchNormalization" for n in folded.graph.node)
    before = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    return folded, f"{before - left} BatchNormalization folded first"
