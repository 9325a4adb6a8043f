"""Measured host latency of several models, interleaved so that load from other processes hits all alike."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx

from edgeopt.verify.runtime import make_session


def interleaved_latency(models: list[onnx.ModelProto], feeds: dict[str, np.ndarray], rounds: int = 5,
                        seconds_per_round: float = 0.2, min_runs: int = 3) -> list[float]:
    """Median latency in ms of each model: rounds alternate between the models, each round runs
    a model for about seconds_per_round (at least min_runs times)."""
    sessions = [make_session(m) for m in models]
    for s in sessions:
        for _ in range(2):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            n = 0
            while n < min_runs or time.perf_counter() - start < seconds_per_round:
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[i].append(time.perf_counter() - t0)
                n += 1
    return [statistics.median(t) * 1e3 for t in times]
