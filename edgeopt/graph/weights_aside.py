"""Set big weights aside while a whole-model tool (onnxsim) works on the graph, then put them back.

onnxsim's cost on a 100 MB model is almost all marshalling (serialize, parse,
hash every tensor), not simplification. A weight that only feeds nodes which
can never be constant-folded (a Conv reading the image, a Gemm reading an
activation) needs no data for simplification: it is handed to the tool as a
typed graph input instead, which the tool must treat as opaque (it can neither
fold through it nor rewrite its data), and the real tensor is restored by name
afterwards. Weights that a foldable node reads keep their data.

Weights held in Constant nodes (`value` tensors) are lifted to initializers on
the way, so the tool and everything after it see one kind of weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}
# Nodes never constant-folded even when their inputs are constant.
NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                "Bernoulli", "If", "Loop", "Scan"}


@dataclass
class Aside:
    """What was set aside: tensors by name, in the model's initializer order."""

    tensors: dict[str, onnx.TensorProto] = field(default_factory=dict)
    lifted_constants: list[str] = field(default_factory=list)  # Constant node names made initializers


def _elements(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def set_weights_aside(model: onnx.ModelProto, min_elements: int = 4096) -> tuple[onnx.ModelProto, Aside]:
    """A light copy of `model` (which is left untouched) and the tensors set aside from it.

    Float initializers (and Constant-node tensors) of at least `min_elements`
    elements whose every reader is a node that cannot be folded become graph
    inputs of the same type and shape in the copy.
    """
    g = model.graph
    aside = Aside()
    declared_inputs = {vi.name for vi in g.input}
    outputs = {vo.name for vo in g.output}
    tensors: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
    liftable: dict[str, onnx.TensorProto] = {}
    for node in g.node:
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
                and node.attribute[0].name == "value" and node.output[0] not in outputs):
            liftable[node.output[0]] = node.attribute[0].t
            aside.lifted_constants.append(node.name or node.output[0])

    constant = set(tensors) | set(liftable)
    readers_fold: dict[str, bool] = {}
    for node in g.node:
        if node.op_type == "Constant" and node.output and node.output[0] in liftable:
            continue
        inputs = [i for i in node.input if i]
        foldable = (bool(inputs) and all(i in constant for i in inputs) and node.op_type not in NOT_FOLDABLE
                    and node.domain in ("", "ai.onnx"))
        if foldable:
            constant.update(o for o in node.output if o)
        for i in inputs:
            readers_fold[i] = readers_fold.get(i, False) or foldable

    def set_aside(name: str, tensor: onnx.TensorProto) -> bool:
        return (tensor.data_type in FLOAT_TYPES and _elements(tensor) >= min_elements
                and not readers_fold.get(name, False) and name not in declared_inputs and name not in outputs)

    light = onnx.ModelProto()
    for desc, value in model.ListFields():
        if desc.name != "graph":
            _copy_field(light, desc, value)
    for desc, value in g.ListFields():
        if desc.name not in ("initializer", "node"):
            _copy_field(light.graph, desc, value)
    for node in g.node:
        if node.op_type == "Constant" and node.output and node.output[0] in liftable:
            continue
        light.graph.node.add().CopyFrom(node)
    for name, tensor in list(tensors.items()) + list(liftable.items()):
        if set_aside(name, tensor):
            aside.tensors[name] = tensor
            light.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        else:
            copy = light.graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = name
    return light, aside


def put_weights_back(model: onnx.ModelProto, aside: Aside) -> onnx.ModelProto:
    """Turn the inputs that stand for set-aside tensors back into initializers (in place).

    A set-aside tensor that nothing reads any more is dropped with its input.
    """
    g = model.graph
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output} | _subgraph_reads(g)
    keep = [vi for vi in g.input if vi.name not in aside.tensors]
    del g.input[:]
    g.input.extend(keep)
    for name, tensor in aside.tensors.items():
        if name in read:
            g.initializer.add().CopyFrom(tensor)
            g.initializer[-1].name = name
    return model


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return names


def _copy_field(target, desc, value) -> None:
    if desc.is_repeated:
        getattr(target, desc.name).extend(value)
    elif desc.type == desc.TYPE_MESSAGE:
        getattr(target, desc.name).CopyFrom(value)
    else:
        setattr(target, desc.name, value)
