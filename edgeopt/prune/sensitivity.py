"""Sensitivity scan: prune each channel group alone at several ratios, then propose per-layer ratios.

The scan measures, for every prunable group and ratio, the MACs saved and
the fidelity of the network's outputs (relative error, cosine, top-1
agreement, accuracy when there are labels). The proposal picks one ratio
per group: a greedy allocation by MACs saved per unit of squared relative
error (errors of independent layers add roughly in energy) under a total
error allowance, and a bisection on that allowance so that the *measured*
fidelity of the whole proposal meets the budget (accuracy drop or cosine).
"""

from __future__ import annotations

import glob as globmod
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from edgeopt.prune.core import PruneConfig, analyze_model, prune_model
from edgeopt.prune.criteria import channel_scores
from edgeopt.prune.plan import _choices
from edgeopt.prune.reconstruct import TargetCache
from edgeopt.progress import steps
from edgeopt.verify.budget import FidelityBudget, Meter
from edgeopt.verify.fidelity import FidelitySpec
from edgeopt.graph.activations import run_chunk
from edgeopt.verify.runtime import make_session, run_batched


@dataclass
class Trial:
    group: int
    name: str  # the group's first producing layer
    layers: list[str]
    channels: int
    ratio: float  # asked for
    keep: int
    macs_saved: int
    rel_error: float
    cosine: float | None
    top1_agreement: float | None
    accuracy: float | None

    def as_dict(self, baseline_accuracy: float | None) -> dict:
        drop = None if self.accuracy is None or baseline_accuracy is None else baseline_accuracy - self.accuracy
        return {"group": self.group, "layer": self.name, "layers": self.layers, "channels": self.channels,
                "ratio": self.ratio, "kept": self.keep, "removed_ratio": round(1 - self.keep / self.channels, 4),
                "macs_saved": self.macs_saved, "rel_error": self.rel_error, "cosine": self.cosine,
                "top1_agreement": self.top1_agreement, "accuracy": self.accuracy, "accuracy_drop": drop}


def Budget(max_accuracy_drop: float | None = None, min_cosine: float | None = None,
           spec: FidelitySpec | None = None) -> FidelityBudget:
    """What the proposal must keep: an accuracy drop (needs labels) and / or a cosine, on the recipe's
    fidelity output and metric (edgeopt/verify/budget.py: the helper bits: auto shares)."""
    return FidelityBudget(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, spec=spec)


@dataclass
class Proposal:
    keep: dict[int, int]
    ratios: dict[str, float]  # layer-name glob -> ratio, ready for prune_channels
    macs_before: int
    macs_after: int
    measured: dict
    met: bool

    @property
    def macs_saved(self) -> int:
        return self.macs_before - self.macs_after


@dataclass
class Scan:
    trials: list[Trial]
    macs_before: int
    baseline_accuracy: float | None
    frozen: list[dict] = field(default_factory=list)  # groups that cannot be pruned, and why
    scores: dict = field(default_factory=dict)
    targets: TargetCache | None = None  # the original's layer outputs that reconstruction fits to, shared


class Evaluator:
    """Runs a candidate model on the evaluation inputs and measures it against the original, on the
    recipe's fidelity output and metric (verify.budget.Meter; spec None: every output, cosine)."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], labels: np.ndarray | None,
                 spec: FidelitySpec | None = None):
        self.feeds, self.labels = feeds, labels
        # runs that fit in memory (a candidate is the original, pruned: no larger)
        self.chunk = run_chunk(model, feeds, "measuring pruned candidates")
        self.reference = run_batched(make_session(model), model, feeds, chunk=self.chunk)
        self.meter = Meter(self.reference, [o.name for o in model.graph.output], spec, labels)
        self.baseline_accuracy = self.meter.baseline_accuracy

    def __call__(self, model: onnx.ModelProto) -> dict:
        return self.meter(run_batched(make_session(model), model, self.feeds, chunk=self.chunk))

    def loss(self, measured: dict) -> tuple[float, float]:
        """Lower is better: the continuous error of the budget's output (verify.budget.Meter.loss)."""
        return self.meter.loss(measured)


def scan(model: onnx.ModelProto, config: PruneConfig, ratios: list[float], feeds: dict[str, np.ndarray],
         labels: np.ndarray | None = None, calib: dict[str, np.ndarray] | None = None,
         input_shapes: dict[str, list[int]] | None = None, seed: int = 0,
         log: Callable[[str], None] = lambda m: None,
         spec: FidelitySpec | None = None) -> tuple[Scan, Evaluator]:
    """Prune each prunable group alone at each ratio and measure the network (on spec's output and metric)."""
    evaluate = Evaluator(model, feeds, labels, spec)
    calib = calib if calib is not None else feeds
    _, analysis = analyze_model(model, input_shapes)
    groups = [g for g in analysis.groups if g.prunable]
    from edgeopt.prune.plan import match

    groups = [g for g in groups if match(config.exclude, g.source_names) is None]
    frozen = [{"layer": g.name, "channels": g.length, "reason": "; ".join(g.frozen)}
              for g in analysis.groups if not g.prunable]
    scores, _ = channel_scores(model, analysis, groups, config.criterion, calib, config.max_samples, seed)
    trials = []
    macs_before = None
    targets = TargetCache()
    with steps("sensitivity scan", len(groups)) as advance:
        for i, group in enumerate(groups):
            choices = _choices(group.length, config.round_to, config.min_channels)
            seen = set()
            for ratio in ratios:
                want = group.length * (1 - ratio)
                keep = min(choices, key=lambda n: (abs(n - want), -n))
                if keep >= group.length or keep in seen:
                    continue
                seen.add(keep)
                out = prune_model(model, config, calib, input_shapes, seed, keep_counts={group.id: keep},
                                  scores=scores, targets=targets)
                macs_before = out.macs_before
                m = evaluate(out.model)
                trials.append(Trial(group.id, group.name, group.source_names, group.length, ratio, keep,
                                    out.macs_saved, m["rel_error"], m["cosine"], m["top1_agreement"], m["accuracy"]))
            log(f"[{i + 1}/{len(groups)}] {group.name}: {len(seen)} trials")
            advance()
    if macs_before is None:
        from edgeopt.prune.macs import total_macs

        macs_before = total_macs(model, input_shapes)
    return Scan(trials, macs_before, evaluate.baseline_accuracy, frozen, scores, targets), evaluate


def _options(trials: list[Trial]) -> dict[int, list[Trial]]:
    options: dict[int, list[Trial]] = {}
    for t in trials:
        options.setdefault(t.group, []).append(t)
    return options


def _cost(t: Trial | None) -> float:
    return t.rel_error ** 2 if t else 0.0


def _next_cut(options: dict[int, list[Trial]], chosen: dict[int, Trial], room: float = math.inf) -> Trial | None:
    """The cut (one group to a deeper trial) with the most MACs saved per unit of squared error added,
    among those adding at most `room`."""
    best, best_eff = None, -1.0
    for gid, opts in options.items():
        cur = chosen.get(gid)
        cur_macs = cur.macs_saved if cur else 0
        for t in opts:
            gain = t.macs_saved - cur_macs
            cost = _cost(t) - _cost(cur)
            if gain <= 0 or cost > room:
                continue
            eff = gain / max(cost, 1e-12)
            if eff > best_eff:
                best, best_eff = t, eff
    return best


def _allocate(trials: list[Trial], allowance: float) -> dict[int, Trial]:
    """Greedy multiple-choice knapsack: most MACs saved per unit of squared error within the allowance."""
    options = _options(trials)
    chosen: dict[int, Trial] = {}
    spent = 0.0
    while (best := _next_cut(options, chosen, allowance - spent)) is not None:
        spent += _cost(best) - _cost(chosen.get(best.group))
        chosen[best.group] = best
    return chosen


def greedy_path(trials: list[Trial]) -> list[dict[int, Trial]]:
    """The same greedy without an allowance: every state it passes through, cheapest cuts first
    (path[0] prunes nothing; each next state cuts one group deeper). It reads only .group, .macs_saved
    and .rel_error, so the split passes' target (factorize.target) walks its layer sizes with it too."""
    options = _options(trials)
    path: list[dict[int, Trial]] = [{}]
    while (best := _next_cut(options, path[-1])) is not None:
        path.append({**path[-1], best.group: best})
    return path


def ratios_for(chosen: dict[int, Trial]) -> dict[str, float]:
    """prune_channels' `ratio` mapping that reproduces the chosen channel counts."""
    return {globmod.escape(t.name): round(1 - t.keep / t.channels, 6) for t in sorted(chosen.values(), key=lambda t: t.group)}


def propose(model: onnx.ModelProto, result: Scan, evaluate: Evaluator, config: PruneConfig, budget: Budget,
            calib: dict[str, np.ndarray] | None = None, input_shapes: dict[str, list[int]] | None = None,
            seed: int = 0, steps: int = 8, log: Callable[[str], None] = lambda m: None) -> Proposal | None:
    """Per-group ratios that meet the budget (measured on the whole pruned network) at the most MACs saved."""
    calib = calib if calib is not None else evaluate.feeds
    costs = sorted({t.rel_error ** 2 for t in result.trials if t.rel_error > 0})
    if not result.trials:
        return None
    lo, hi = math.log(max(costs[0] if costs else 1e-12, 1e-12)) - 1, math.log(max(sum(costs), 1e-12)) + 0.1
    best: Proposal | None = None
    tried: dict[tuple, Proposal] = {}

    def attempt(allowance: float) -> Proposal:
        chosen = _allocate(result.trials, allowance)
        key = tuple(sorted((g, t.keep) for g, t in chosen.items()))
        if key in tried:
            return tried[key]
        keep = {g: t.keep for g, t in chosen.items()}
        out = prune_model(model, config, calib, input_shapes, seed, keep_counts=keep, scores=result.scores,
                          targets=result.targets)
        m = evaluate(out.model) if keep else {"cosine": 1.0, "rel_error": 0.0, "top1_agreement": 1.0,
                                              "accuracy": evaluate.baseline_accuracy}
        p = Proposal(keep, ratios_for(chosen), out.macs_before, out.macs_after, m,
                     budget.met(m, evaluate.baseline_accuracy))
        tried[key] = p
        log(f"allowance {allowance:.3g}: {len(keep)} groups, MACs -{100 * p.macs_saved / max(p.macs_before, 1):.1f}%, "
            f"rel error {m['rel_error']:.4f}, accuracy {m.get('accuracy')}, {'meets' if p.met else 'misses'} the budget")
        return p

    for _ in range(steps):
        mid = (lo + hi) / 2
        p = attempt(math.exp(mid))
        if p.met:
            if best is None or p.macs_saved > best.macs_saved:
                best = p
            lo = mid
        else:
            hi = mid
    if best is None:
        best = attempt(0.0)
    return best
