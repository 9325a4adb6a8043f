"""Intermediate activations on real data: expose values as extra outputs and run onnxruntime.

Used by data-driven passes (APoZ, reconstruction, input-weighted factorization,
calibration) to see what a layer actually receives.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.verify.runtime import make_session, run_batched


def collect_activations(model: onnx.ModelProto, names: list[str],
                        feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values of the named tensors when the model runs on feeds (all samples, batch first)."""
    existing = [o.name for o in model.graph.output]
    extra = [n for n in dict.fromkeys(names) if n not in existing]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in extra:
        probe.graph.output.add().name = name  # untyped: onnxruntime infers the type
    session = make_session(probe)
    outputs = run_batched(session, probe, feeds)
    by_name = dict(zip(existing + extra, outputs))
    return {n: by_name[n] for n in names}
