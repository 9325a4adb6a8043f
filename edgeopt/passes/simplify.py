"""simplify: onnxsim's constant folding, dead-code removal and shape simplification."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register

ONNXSIM_META = "onnxsim."


@dataclass
class Params:
    fold_constants: bool = param(True, "evaluate every subgraph whose inputs are all constant "
                                       "(shape arithmetic, weight transposes) and store its result")
    optimize: bool = param(True, "run onnxsim's optimizer passes (identity / dropout / no-op "
                                 "elimination, Pad and Transpose fusion, ...)")
    fuse_batchnorm: bool = param(False, "let onnxsim fold BatchNormalization into Conv too; off by default, "
                                        "since fold_batchnorm does it with a note per node")
    skip_optimizers: list[str] = param(default_factory=list,
                                       help="onnxsim optimizer passes not to run, by name "
                                            "(e.g. fuse_consecutive_transposes)")


@register
class Simplify(Pass):
    name = "simplify"
    summary = "Fold constants, drop dead and no-op nodes, simplify shapes (onnxsim)"
    description = (
        "Runs onnxsim (no random-input check of its own: the pipeline verifies every stage). "
        "Symbolic dims such as a dynamic batch stay symbolic. Weights held in Constant nodes come "
        "out as initializers, and initializers stay initializers, so later passes and the profiler "
        "see every weight. If onnxsim fails on a model, the model is returned unchanged with a "
        "note saying why; the run goes on."
    )
    lossless = True
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        import onnxsim

        before = Counter(n.op_type for n in model.graph.node)
        skipped = list(params.skip_optimizers)
        try:
            simplified, _ = onnxsim.simplify(
                model,
                check_n=0,
                perform_optimization=params.optimize,
                skip_fuse_bn=not params.fuse_batchnorm,
                skipped_optimizers=skipped or None,
                skip_constant_folding=not params.fold_constants,
                certify=False,
            )
        except Exception as exc:  # onnxsim raises RuntimeError, ValueError, its own types: never crash the run
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            note = NodeNote("(model)", "", "skipped", f"onnxsim failed, model left unchanged: {reason}")
            return PassResult(model, False, [note], "onnxsim failed; model unchanged")

        _strip_onnxsim_metadata(simplified, model)
        lifted = sum(1 for n in simplified.graph.node if n.op_type == "Constant")
        if lifted:
            simplified = to_proto(to_ir(simplified))
            lifted -= sum(1 for n in simplified.graph.node if n.op_type == "Constant")
        after = Counter(n.op_type for n in simplified.graph.node)
        notes = _notes(model, simplified)
        n_before, n_after = sum(before.values()), sum(after.values())
        modified = simplified.SerializeToString(deterministic=True) != model.SerializeToString(deterministic=True)
        gone = before - after
        summary = f"{n_before} -> {n_after} nodes"
        if gone:
            summary += " (" + ", ".join(f"-{k} {op}" for op, k in sorted(gone.items(), key=lambda x: (-x[1], x[0]))[:5])
            summary += ")"
        if lifted:
            summary += f"; {lifted} Constant-node weights became initializers"
        return PassResult(simplified if modified else model, modified, notes, summary)


def _notes(original: onnx.ModelProto, simplified: onnx.ModelProto) -> list[NodeNote]:
    """One note per original node whose outputs no node produces any more."""
    produced = {o for n in simplified.graph.node for o in n.output}
    initializers = {i.name for i in simplified.graph.initializer}
    notes = []
    for i, node in enumerate(original.graph.node):
        outputs = [o for o in node.output if o]
        if not outputs or any(o in produced for o in outputs):
            continue
        label = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Constant":
            reason = "became an initializer" if outputs[0] in initializers else "folded or unused"
            notes.append(NodeNote(label, node.op_type, "removed", reason))
        elif all(o in initializers for o in outputs):
            notes.append(NodeNote(label, node.op_type, "folded", "computed at build time: its output is a constant"))
        else:
            notes.append(NodeNote(label, node.op_type, "removed",
                                  "a no-op, dead, or merged into another node"))
    return notes


def _strip_onnxsim_metadata(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Drop onnxsim's bookkeeping keys (long lists for big models) but keep the model's own."""
    own = {p.key for p in original.metadata_props}
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(ONNXSIM_META) or p.key in own]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
