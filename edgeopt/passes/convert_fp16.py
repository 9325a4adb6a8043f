"""convert_fp16: float16 weights and compute where the operators support it, float32 at the edges."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeopt.graph.edit import add_initializer, to_ir, to_proto
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.quant.prepare import name_nodes
from edgeopt.quant.report import fmt_bytes
from edgeopt.quant.select import excluded
from edgeopt.verify.probe import changed_on_probe

# Kept in float32 besides onnxconverter-common's own list: quantization nodes need float32 scales
# below opset 19, and a float16 scale would change what int8 kernels onnxruntime fuses.
ALWAYS_FLOAT32 = ["QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"]

# Relative L2 error of each output on one probe sample: float16 rounding stays far below, even where a
# step-like output flips a few pixels (PP-OCRv4 det: max error 1.0, cosine 1.0000); an overflow to inf, a
# shape computed in float16 or a wrong conversion does not (the model is then left unchanged).
FLOAT16_PROBE_TOLERANCE = 0.05

# Operators whose output element type is an attribute: the converter turns every float32 value into
# float16 but leaves these attributes at FLOAT, so a PyTorch attention's Cast(to=FLOAT) of the head
# size would produce float32 where its readers now expect float16 (onnxruntime: "Type Error").
TYPE_ATTRIBUTE = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                  "RandomNormalLike": "dtype", "RandomUniformLike": "dtype"}


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _retype_float_producers(converted: onnx.ModelProto, originals: set[str]) -> int:
    """Point the original model's float32-producing Casts (and friends) at float16 where their output now
    lives in float16: the node was not blocked (its name is in `originals`) or the converter recorded the
    output as float16. The converter's own Casts to float32 (before blocked nodes, at the outputs) have
    new names and float32 value_info, so they stay."""
    retyped = 0
    for graph in _graphs(converted.graph):
        float16_values = {v.name for v in graph.value_info
                          if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
        for node in graph.node:
            key = TYPE_ATTRIBUTE.get(node.op_type)
            attr = next((a for a in node.attribute if a.name == key), None)
            if attr is None or attr.i != onnx.TensorProto.FLOAT:
                continue
            if (graph is converted.graph and node.name in originals) or node.output[0] in float16_values:
                attr.i = onnx.TensorProto.FLOAT16
                retyped += 1
    return retyped


def _read_outputs_in_float16(converted: onnx.ModelProto, blocked_ops: set[str], blocked_nodes: set[str]) -> int:
    """A graph output that the model also reads inside (BERT's hidden states, a detector's features):
    the converter puts a Cast to float32 in front of the output for the caller but leaves the inside
    readers on that float32 value, while their own outputs are now declared float16 (onnxruntime: "Type
    Error"). Readers that compute in float16 read the float16 value before the Cast again."""
    graph = converted.graph
    producers = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for output in graph.output:
        cast = producers.get(output.name)
        if cast is None or cast.op_type != "Cast" or any(a.name == "to" and a.i != onnx.TensorProto.FLOAT
                                                         for a in cast.attribute):
            continue
        inside = cast.input[0]
        for node in graph.node:
            if node is cast or node.op_type in blocked_ops or node.name in blocked_nodes:
                continue
            for i, name in enumerate(node.input):
                if name == output.name:
                    node.input[i] = inside
                    rewired += 1
    return rewired


def _restore_float32_constants(original: onnx.ModelProto, converted: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Weights the converter halved only to Cast back to float32 (all their readers are blocked) are
    stored in float32 again, with their original values: no double rounding, no run-time Cast, and
    constant scales for onnxruntime's QDQ fusions."""
    originals = {t.name: t for t in original.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    model = to_ir(converted, lift_constants=False)
    graph = model.graph
    restored = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.attributes.get_int("to", 0) != onnx.TensorProto.FLOAT:
            continue
        src = node.inputs[0]
        if src is None or not src.is_initializer() or src.name not in originals:
            continue
        array = numpy_helper.to_array(originals[src.name])
        value = add_initializer(graph, f"{src.name}_fp32", array)
        node.outputs[0].replace_all_uses_with(value)
        restored += 1
    if not restored:
        return converted, 0
    out = to_proto(model)
    return out, restored


def _float_bytes(model: onnx.ModelProto) -> tuple[int, int]:
    """Bytes of float32 and float16 initializers (and Constant tensors)."""
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                                for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    f32 = sum(numpy_helper.to_array(t).nbytes for t in tensors if t.data_type == onnx.TensorProto.FLOAT)
    f16 = sum(numpy_helper.to_array(t).nbytes for t in tensors if t.data_type == onnx.TensorProto.FLOAT16)
    return f32, f16


@register
class ConvertFp16(Pass):
    name = "convert_fp16"
    summary = "float16 weights and compute where the operators support it; inputs and outputs stay float32"
    description = (
        "Converts float32 initializers, Constant tensors and the compute of every operator that supports "
        "float16 to float16, with Casts at the boundaries of what stays float32, using onnxconverter-common's "
        "converter (its block list of operators without float16 support, plus QuantizeLinear / "
        "DequantizeLinear, plus op_block_list and exclude). Constants beyond float16's range are clamped to "
        "+-max_finite_val and tiny non-zero ones to +-min_positive_val. On a CPU without float16 "
        "arithmetic onnxruntime computes these nodes through inserted Casts, so the file halves but host "
        "latency may not improve: the gain is on devices with float16 units (GPUs, NPUs, ARMv8.2+). "
        "onnxruntime 1.32 on x86-64 can crash opening such a model (its NCHWc layout pass on float16 "
        "attention); edgeopt's sessions turn that pass off, and yours can: "
        "InferenceSession(..., disabled_optimizers=['NchwcTransformer']).")
    lossless = False
    advice = "keeping the sensitive ops in float32 (`exclude` or `op_block_list`)"

    @dataclass
    class Params:
        keep_io_types: bool = param(True, "model inputs and outputs stay float32 (Casts at the edges)")
        op_block_list: list[str] = param(default_factory=list,
                                         help="more op types kept in float32 (besides the converter's list)")
        exclude: list[str] = param(default_factory=list, help="node names, globs or op types kept in float32")
        min_positive_val: float = param(1e-7, "non-zero constants smaller than this become +-this", gt=0)
        max_finite_val: float = param(1e4, "constants larger than this are clamped to +-this", gt=0, le=65504)

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        try:
            from onnxconverter_common import float16
        except ImportError:
            return PassResult(model, False, [], summary="left unchanged: onnxconverter-common is not installed "
                                                        "(pip install onnxconverter-common)")
        original = model
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
            return PassResult(model, False, [NodeNote("(model)", "", "skipped", "the model already has float16 "
                                                      "weights")], summary="left unchanged: already float16")
        # The converter names the Casts it inserts after the nodes they feed: unnamed or repeated
        # names would give two Casts one output name (a graph that is not SSA).
        model = name_nodes(model)
        blocked_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(ALWAYS_FLOAT32) | set(params.op_block_list))
        blocked_nodes = {n.name: excluded(n.name, n.op_type, params.exclude) for n in model.graph.node
                         if n.name and excluded(n.name, n.op_type, params.exclude)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the clamping warnings are summarised in our notes
                result = float16.convert_float_to_float16(
                    model, min_positive_val=params.min_positive_val, max_finite_val=params.max_finite_val,
                    keep_io_types=params.keep_io_types, op_block_list=blocked_ops,
                    node_block_list=sorted(blocked_nodes))
            originals = {n.name for n in model.graph.node if n.op_type in TYPE_ATTRIBUTE
                         and n.op_type not in blocked_ops and n.name not in blocked_nodes}
            _retype_float_producers(result, originals)
            _read_outputs_in_float16(result, set(blocked_ops), set(blocked_nodes))
            result, restored = _restore_float32_constants(model, result)
        except Exception as exc:  # the converter raises assorted errors on graphs it does not handle
            reason = f"onnxconverter-common cannot convert the model: {' '.join(str(exc).split())[:200]}"
            return PassResult(original, False, [NodeNote("(model)", "", "skipped", reason)],
                              summary=f"left unchanged: {reason}")
        try:
            onnx.checker.check_model(result)
            problem = None
        except Exception as exc:
            problem = f"fails the ONNX checker: {' '.join(str(exc).split())[:200]}"
        if problem is None:  # loads and runs; no overflow past 65504 or size computed in float16
            problem = changed_on_probe(original, result, ctx, FLOAT16_PROBE_TOLERANCE, by="rel_l2")
        if problem:
            reason = f"the float16 model is not usable ({problem})"
            return PassResult(original, False, [NodeNote("(model)", "", "skipped", reason)],
                              summary=f"left unchanged: {reason}")
        notes = []
        for node in model.graph.node:
            label = node.name or f"<{node.output[0]}>"
            if node.name in blocked_nodes:
                notes.append(NodeNote(label, node.op_type, "skipped",
                                      f"kept float32: excluded by {blocked_nodes[node.name]!r}"))
            elif node.op_type in blocked_ops:
                notes.append(NodeNote(label, node.op_type, "skipped",
                                      f"kept float32: {node.op_type} has no float16 support"))
            elif node.op_type != "Constant":
                notes.append(NodeNote(label, node.op_type, "converted", "float16"))
        before, _ = _float_bytes(model)
        f32_after, f16_after = _float_bytes(result)
        n_casts = sum(n.op_type == "Cast" for n in result.graph.node) - sum(n.op_type == "Cast" for n in model.graph.node)
        n_conv = sum(n.action == "converted" for n in notes)
        n_kept = sum(n.action == "skipped" for n in notes)
        summary = (f"float16: {n_conv} nodes converted, {n_kept} kept float32, {n_casts} Casts added; float "
                   f"weights {fmt_bytes(before)} -> {fmt_bytes(f16_after + f32_after)}")
        return PassResult(result, True, notes, summary=summary)
