"""Measured host latency of several models, interleaved so that load from other processes hits all alike."""

from __future__ import annotations

import time

import numpy as np
import onnx

from edgeopt.verify.runtime import make_session


def interleaved_latency(models: list[onnx.ModelProto], feeds: dict[str, np.ndarray], rounds: int = 5,
                        seconds_per_round: float = 0.2, quantile: float = 0.5) -> list[float]:
    """Latency in ms of each model at the given quantile of its runs (0.5: the median; 0.1: the
    latency without interference, the steadiest figure on a shared machine)."""
    return [q[0] for q in latency_quantiles(models, feeds, (quantile,), rounds, seconds_per_round)]


def latency_quantiles(models: list[onnx.ModelProto], feeds: dict[str, np.ndarray],
                      quantiles: tuple[float, ...] = (0.1, 0.5), rounds: int = 5,
                      seconds_per_round: float = 0.2) -> list[list[float]]:
    """For each model, its latency in ms at each quantile, from one interleaved series: rounds
    alternate between the models, each round runs a model for about seconds_per_round (at least 3 runs)."""
    sessions = [make_session(m) for m in models]
    for s in sessions:
        for _ in range(2):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            while len(times[i]) < 3 or time.perf_counter() - start < seconds_per_round:
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[i].append(time.perf_counter() - t0)
    return [[float(np.quantile(t, q)) * 1e3 for q in quantiles] for t in times]
