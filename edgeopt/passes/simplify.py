"""simplify: onnxsim's constant folding, dead-code removal and shape simplification."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from edgeopt.graph.weights_aside import put_weights_back, set_weights_aside
from edgeopt.native_stderr import captured_stderr
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register

ONNXSIM_META = "onnxsim."
ASIDE_MIN_ELEMENTS = 4096  # float weights this big that no foldable node reads skip onnxsim's marshalling


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
        # With BN fusion on, onnxsim must see the Conv and BN data it rewrites: set nothing aside.
        light, aside = set_weights_aside(model, min_elements=ASIDE_MIN_ELEMENTS if not params.fuse_batchnorm
                                         else 2**62)
        notes = []
        said: list[str] = []  # onnxsim's own warnings, kept out of the terminal
        simplified, problem = _onnxsim(light, params, fold=params.fold_constants, said=said)
        if simplified is not None and _signature(simplified) == _signature(light) and not aside.lifted_constants:
            return PassResult(model, False, [], f"nothing to simplify ({len(model.graph.node)} nodes)")
        if simplified is not None:
            problem = _broken(model, light, simplified, aside, ctx)
        if problem and params.fold_constants:
            # onnxsim folds shape arithmetic wrongly on some graphs with a free batch and fixed H/W
            # (PP-OCRv4 rec: a Shape folded to width 39 where it is 40); its other rewrites are sound.
            notes.append(NodeNote("(model)", "", "skipped", f"onnxsim's constant folding {problem}; "
                                  "simplified without constant folding"))
            simplified, problem = _onnxsim(light, params, fold=False, said=said)
            if simplified is not None:
                problem = _broken(model, light, simplified, aside, ctx)
        if problem:
            notes.append(NodeNote("(model)", "", "skipped", f"onnxsim {problem}; model left unchanged"))
            notes += [NodeNote("(model)", "", "onnxsim said", line[:300]) for line in said[:20]]
            return PassResult(model, False, notes, "onnxsim failed; model unchanged")
        put_weights_back(simplified, aside)
        _strip_onnxsim_metadata(simplified, model)
        unfolded = bool(notes)  # the fallback ran: say so in the summary
        lifted = len(aside.lifted_constants)
        before = Counter(n.op_type for n in model.graph.node)
        after = Counter(n.op_type for n in simplified.graph.node)
        notes += _notes(model, simplified)
        notes += [NodeNote("(model)", "", "onnxsim said", line[:300]) for line in said[:20]]
        gone = before - after
        summary = f"{sum(before.values())} -> {sum(after.values())} nodes"
        if gone:
            summary += " (" + ", ".join(f"-{k} {op}" for op, k in sorted(gone.items(), key=lambda x: (-x[1], x[0]))[:5])
            summary += ")"
        if lifted:
            summary += f"; {lifted} Constant nodes became initializers"
        if unfolded:
            summary += "; without constant folding (onnxsim's folding was wrong here, see notes)"
        removed = _removed_macs(model, simplified, ctx)
        if removed:
            summary += f"; {removed:,} MACs of duplicate or dead layers removed"
        return PassResult(simplified, True, notes, summary, folded_macs=removed)


def _onnxsim(light: onnx.ModelProto, params: Params, fold: bool,
             said: list[str]) -> tuple[onnx.ModelProto | None, str | None]:
    """onnxsim's result, or None and why it failed (it raises RuntimeError, ValueError, its own types).
    What its C++ prints on stderr ("WARNING: failed to run Unsqueeze ...") goes to `said`, for the notes."""
    import onnxsim

    lines: list[str] = []
    try:
        with captured_stderr() as lines:
            simplified, _ = onnxsim.simplify(
                light,
                check_n=0,
                perform_optimization=params.optimize,
                skip_fuse_bn=not params.fuse_batchnorm,
                skipped_optimizers=list(params.skip_optimizers) or None,
                skip_constant_folding=not fold,
                certify=False,
            )
    except Exception as exc:  # never crash the run
        return None, "failed: " + (" ".join(str(exc).split())[:300] or type(exc).__name__)
    finally:
        said.extend(line for line in lines if line not in said)
    return simplified, None


def _broken(model: onnx.ModelProto, light: onnx.ModelProto, simplified: onnx.ModelProto, aside,
            ctx: PassContext) -> str | None:
    """Why onnxsim's result is not the same model, or None: it must load in onnxruntime and compute
    what the input computes on one probe sample (the calibration data's first, else seeded noise).

    Both run as the light models onnxsim saw, the set-aside weights fed as inputs: two sessions of
    the full model would each copy (and pre-pack) every weight, 4 GB more on a 2 GB model.
    """
    from onnx import numpy_helper

    from edgeopt.verify.probe import probe_inputs, same_outputs
    from edgeopt.verify.runtime import make_session, ort_message

    try:
        session = make_session(simplified, threads=1)
    except Exception as exc:  # onnxruntime raises its own types
        return f"gave a model onnxruntime rejects ({ort_message(exc)})"
    try:
        feeds = probe_inputs(model, ctx)
        feeds = {**feeds, **{name: numpy_helper.to_array(t) for name, t in aside.tensors.items()}}
        reference = make_session(light, threads=1)
        expected = reference.run(None, _known(reference, feeds))
    except Exception:  # noqa: BLE001 - no probe here (shapes unknown): the pipeline's verification decides
        return None
    try:
        got = session.run(None, _known(session, feeds))
    except Exception as exc:
        return f"gave a model that fails in onnxruntime ({ort_message(exc)})"
    if not same_outputs(expected, got):
        return "gave a model that computes something else on a probe input"
    return None


def _known(session, feeds: dict) -> dict:
    """The feeds the session takes (onnxsim may drop a set-aside weight that nothing reads any more)."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def _removed_macs(model: onnx.ModelProto, simplified: onnx.ModelProto, ctx: PassContext) -> int:
    """MACs of the Conv / Gemm / MatMul layers onnxsim removed as duplicates (two Convs reading the same
    input and weights) or dead code: the MAC count may drop by this much without changing the outputs."""
    from edgeopt.graph.macs import layer_macs
    from edgeopt.graph.shapes import infer_value_shapes

    produced = {o for n in simplified.graph.node for o in n.output}
    gone = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            and n.output and n.output[0] not in produced]
    if not gone:
        return 0
    try:
        shapes = infer_value_shapes(model, ctx.input_shapes)
    except Exception:  # noqa: BLE001 - no shapes, no allowance: the pipeline's MAC check decides
        return 0
    total = 0
    for node in gone:
        (_, x), (_, w), (_, y) = (shapes.get(t, (None, None)) for t in (node.input[0], node.input[1], node.output[0]))
        if x and w and y:
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            total += layer_macs(node.op_type, x, w, y, trans_a)
    return total


def _signature(model: onnx.ModelProto) -> tuple:
    """What counts as a change: the nodes (op, wiring, attributes), the initializers and inputs."""
    g = model.graph
    nodes = tuple((n.op_type, n.domain, tuple(n.input), tuple(n.output),
                   tuple(a.SerializeToString(deterministic=True) for a in n.attribute)) for n in g.node)
    inits = tuple(sorted((t.name, tuple(t.dims), t.data_type) for t in g.initializer))
    return nodes, inits, tuple(vi.name for vi in g.input), tuple(vo.name for vo in g.output)


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
