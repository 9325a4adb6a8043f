"""One probe sample through a model and through a rewrite of it that must compute the same (onnxsim's
simplification, onnx's opset conversion): a cheap check that catches a wrong rewrite before the pass
builds on it and the stage's fidelity blames the pass."""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.pass_types import PassContext

TOLERANCE = 4e-3  # of the output scale: catches a wrong rewrite, not float16 rounding (the pipeline is stricter)


def probe_inputs(model: onnx.ModelProto, ctx: PassContext) -> dict[str, np.ndarray]:
    """The calibration data's first sample, else seeded noise at batch 1."""
    from edgeopt.graph.shapes import resolve_input_shapes
    from edgeopt.verify.feeds import take
    from edgeopt.verify.inputs import random_inputs

    if ctx.data is not None:
        return take(ctx.data, 1)
    shapes = resolve_input_shapes(model, ctx.input_shapes)  # the shape layer; UserError: no probe
    return random_inputs(model, shapes, ctx.seed, free_batch=1, distributions=ctx.random_inputs).feeds


def same_outputs(expected: list, got: list, tolerance: float = TOLERANCE, by: str = "max_abs") -> bool:
    """Same shapes, non-finite values in the same places, and the finite ones within tolerance: of the
    output scale per element (by="max_abs", for rewrites that must not change the numbers), or as the
    relative L2 error of each output (by="rel_l2", for lossy rewrites: a few flipped pixels of a
    step-like output pass, a wrong model does not)."""
    for a, b in zip(expected, got):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return False
        finite = np.isfinite(a)
        diff = a[finite] - b[finite]
        if by == "rel_l2":
            if float(np.linalg.norm(diff)) > tolerance * max(float(np.linalg.norm(a[finite])), 1e-12):
                return False
        elif float(np.abs(diff).max(initial=0)) > tolerance * max(1.0, float(np.abs(a[finite]).max(initial=0))):
            return False
    return len(expected) == len(got)


def changed_on_probe(reference: onnx.ModelProto, candidate: onnx.ModelProto, ctx: PassContext,
                     tolerance: float = TOLERANCE, by: str = "max_abs") -> str | None:
    """Why `candidate` does not compute what `reference` computes on the probe, or None. The candidate's
    session opens first, so a candidate onnxruntime rejects is always reported (no separate load check
    needed); when the probe itself cannot run (shapes unknown, the reference fails) the answer is None and
    the pipeline's verification decides."""
    from edgeopt.verify.runtime import make_session, ort_message

    try:
        session = make_session(candidate, threads=1)
    except Exception as exc:  # onnxruntime raises its own types
        return f"fails in onnxruntime ({ort_message(exc)})"
    try:
        feeds = probe_inputs(reference, ctx)
        expected = make_session(reference, threads=1).run(None, feeds)
    except Exception:  # noqa: BLE001 - shapes unknown or the reference does not run: no probe
        return None
    try:
        got = session.run(None, feeds)
    except Exception as exc:
        return f"fails in onnxruntime ({ort_message(exc)})"
    if not same_outputs(expected, got, tolerance, by):
        return "computes something else on a probe input"
    return None
