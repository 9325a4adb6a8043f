"""onnxruntime sessions and batched runs."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort

from edgeopt.graph.session import open_session
from edgeopt.graph.shapes import batch_axes, graph_inputs, output_batch_axes
from edgeopt.verify.feeds import concat_samples, sample_count, take


def make_session(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session for an in-memory model (full graph optimizations, as a deployment would use).

    threads=None: onnxruntime's default thread pool (fast verification runs);
    threads=1: one intra-op thread without spinning, what the host profile models
    and what latency is measured with. Raises onnxruntime's own errors; callers
    word them with `ort_message`.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warnings would clutter stderr
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return open_session(model, options)


def ort_message(exc: Exception) -> str:
    """The readable part of an onnxruntime error (without its source location and signature)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"/onnxruntime_src/\S+:\d+ \S+?\(.*?\) ", "", text)
    text = text.replace("[ONNXRuntimeError] : ", "")
    return text[:300]


def static_batch(model: onnx.ModelProto) -> int | None:
    """The model's fixed batch size, or None when the batch is free: free as soon as any input has a
    free batch axis (batch_axes), else the first batched input's dim 0 (silero's fixed `state`
    [2, batch, 128] does not make the batch 2)."""
    if batch_axes(model):
        return None
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value
    return None


def run_batched(session: ort.InferenceSession, model: onnx.ModelProto,
                feeds: dict[str, np.ndarray], chunk: int = 256) -> list[np.ndarray]:
    """Run all samples; in chunks of the model's static batch if it has one."""
    batch = sample_count(feeds)
    step = static_batch(model) or chunk
    if batch <= step and static_batch(model) in (None, batch):
        return session.run(None, feeds)
    if static_batch(model) and batch % step:  # a free batch dim takes a shorter last chunk
        raise ValueError(f"the model's batch is fixed at {step} but the data has {batch} samples")
    starts = range(0, batch, step)
    parts = [session.run(None, take(feeds, i, i + step)) for i in starts]
    sizes = [min(step, batch - i) for i in starts]
    axes = output_batch_axes(model)
    return [concat_samples([p[j] for p in parts], sizes, axes.get(out.name))
            for j, out in enumerate(model.graph.output)]
