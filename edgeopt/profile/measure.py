"""Measured latency with onnxruntime on this machine: median of a time-budgeted series of runs.

The default is what the `host` device profile models and what stays comparable
from one pass to the next on a shared machine: onnxruntime with one intra-op
thread, timed by the process CPU clock (`clock="cpu"`). On an idle machine that
equals the wall-clock latency of a single-threaded run; when other jobs share
the cores, wall-clock time grows with their load but CPU time does not.
`clock="wall"` times wall-clock instead (any session, any thread count).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx

from edgeopt.errors import UserError
from edgeopt.verify import runtime


def make_session(model: onnx.ModelProto, threads: int | None = 1):
    """An onnxruntime CPU session for measuring: one intra-op thread by default, as the host
    profile models (threads=None: onnxruntime's default pool). UserError if it cannot load."""
    try:
        return runtime.make_session(model, threads=threads)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UserError(f"onnxruntime cannot load the model: {runtime.ort_message(exc)}") from None


def _single_threaded(session) -> bool:
    try:
        return session.get_session_options().intra_op_num_threads == 1
    except AttributeError:  # not an onnxruntime session: a stand-in with .run
        return False


def random_feeds(session, input_shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs with the given shapes, typed like the session's inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = input_shapes.get(inp.name) or [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        kind = inp.type
        if "float16" in kind:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float16)
        elif "float" in kind or "double" in kind:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float64 if "double" in kind else np.float32)
        elif "int64" in kind:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(np.int64)
        elif "int32" in kind:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(np.int32)
        elif "uint8" in kind:
            feeds[inp.name] = rng.integers(0, 255, size=shape).astype(np.uint8)
        elif "int8" in kind:
            feeds[inp.name] = rng.integers(-127, 127, size=shape).astype(np.int8)
        elif "bool" in kind:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise UserError(f"input {inp.name!r}: cannot make test data of type {kind}")
    return feeds


def measure_latency(model, feeds: dict[str, np.ndarray], warmup: int = 2, min_runs: int = 3,
                    max_seconds: float = 1.0, max_runs: int = 2000, clock: str = "auto") -> float:
    """Median latency in ms of `model` (ModelProto or InferenceSession) on `feeds`.

    Time-budgeted: after `warmup` runs (fewer when they already took a quarter of the
    budget), it runs until `min_runs` are done and `max_seconds` of wall time have
    passed, or `max_runs` are done: a ResNet-50 costs ~1-2 s, a tiny model gets
    hundreds of runs. clock="cpu" times process CPU time and needs a single-threaded
    session (what `make_session` gives, and what a ModelProto gets); clock="wall" times
    wall-clock; clock="auto" (default) is "cpu" for a single-threaded session, else "wall"
    (process CPU time of a thread pool would add up the threads).
    """
    if clock not in ("cpu", "wall", "auto"):
        raise ValueError(f"clock must be 'cpu', 'wall' or 'auto', not {clock!r}")
    session = make_session(model) if isinstance(model, onnx.ModelProto) else model
    if clock == "auto":
        clock = "cpu" if _single_threaded(session) else "wall"
    run = session.run
    timer = time.process_time if clock == "cpu" else time.perf_counter
    start = time.perf_counter()
    for i in range(max(warmup, 1)):
        run(None, feeds)
        if i + 1 >= warmup and time.perf_counter() - start > max_seconds / 4:
            break
    times = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t0 = timer()
        run(None, feeds)
        times.append(timer() - t0)
        if len(times) >= min_runs and time.perf_counter() - start >= max_seconds:
            break
    return statistics.median(times) * 1e3
