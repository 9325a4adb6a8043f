"""`ratio: auto`: per-group prune ratios that meet a MAC or latency target within a fidelity budget.

1. the sensitivity scan (sensitivity.scan): every group pruned alone at each scan ratio, measured;
2. its greedy (sensitivity.greedy_path): cheapest squared output error per MAC saved first;
3. the shortest prefix of that path whose network meets the target, counted exactly on the pruned
   graph (no reconstruction needed to count); its last cut trimmed to the most channels that still
   meet the target, so the target is not overshot by a whole scan step;
4. the whole network verified on the data (with reconstruction when configured); when it misses the
   budget: the longest prefix that holds it (bisection), or nothing, as the caller asks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from edgeopt.pass_types import NodeNote
from edgeopt.prune.core import PruneConfig, PruneOutcome, analyze_model, prune_model
from edgeopt.prune.plan import _choices, plan_groups
from edgeopt.prune.sensitivity import Budget, Scan, Trial, greedy_path, scan


@dataclass
class Target:
    """What must fall to `limit`: measure(model) is the MAC fraction kept, or an estimated latency."""

    name: str  # "MACs kept" or "est latency ms"
    limit: float
    measure: Callable[[onnx.ModelProto], float]

    def met(self, value: float) -> bool:
        return value <= self.limit + 1e-12


@dataclass
class Point:
    """One candidate: the path state it comes from, channels kept per cut group, the target's measure
    and, once verified, the pruned model and its fidelity."""

    state: dict[int, Trial]
    keep: dict[int, int]
    value: float
    measured: dict | None = None
    outcome: PruneOutcome | None = None
    label: str = "greedy"  # or "uniform ratio R": which allocation this point is


@dataclass
class AutoResult:
    point: Point  # what the pass returns (nothing cut: the input model)
    scan: Scan
    baseline_value: float
    baseline_accuracy: float | None
    target_met: bool
    budget_met: bool
    status: str  # "met", "backed off" (to the most pruned point that holds the budget), "unchanged"
    at_target: Point  # the point that met (or came nearest) the target
    rivals: list[Point] = dataclasses.field(default_factory=list)  # other allocations verified at the target

    @property
    def outcome(self) -> PruneOutcome:
        return self.point.outcome


def auto_prune(model: onnx.ModelProto, config: PruneConfig, target: Target, budget: Budget,
               data: dict[str, np.ndarray], labels: np.ndarray | None = None,
               input_shapes: dict[str, list[int]] | None = None, seed: int = 0,
               ratios: tuple[float, ...] = (0.25, 0.5, 0.75), on_miss: str = "best",
               log: Callable[[str], None] = lambda m: None) -> AutoResult:
    """Prune `model` (not modified) to `target` within `budget`, measured on `data` (and `labels`).

    config.ratio and config.balance are ignored: the channel counts come from the scan.
    on_miss: "best" returns the most pruned point that holds the budget, "unchanged" the input model.
    """
    config = dataclasses.replace(config, ratio=0.0, balance=False)
    count_only = dataclasses.replace(config, reconstruct=False)
    result, evaluate = scan(model, config, list(ratios), data, labels, data, input_shapes, seed, log=log)
    path = greedy_path(result.trials)

    def structural(keep: dict[int, int]) -> PruneOutcome:
        return prune_model(model, count_only, data, input_shapes, seed, keep_counts=keep, scores=result.scores)

    def point(state: dict[int, Trial], keep: dict[int, int] | None = None) -> Point:
        keep = {g: t.keep for g, t in state.items()} if keep is None else keep
        return Point(state, keep, target.measure(structural(keep).model))

    points: dict[int, Point] = {}

    def at(i: int) -> Point:
        if i not in points:
            points[i] = point(path[i])
        return points[i]

    baseline = at(0).value
    # the first state that meets the target (the measure only falls along the path: cuts only deepen)
    last = len(path) - 1
    reachable = target.met(at(last).value)
    if target.met(baseline):
        hi = 0
    elif not reachable:
        hi = last
    else:
        lo, hi = 0, last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if target.met(at(mid).value) else (mid, hi)
    at_target = _trim_last_cut(path, hi, config, target, point) if reachable and hi else at(hi)
    # candidates from least to most pruned: the path's states, then the (trimmed) target point
    candidates = [at(i) for i in range(hi)] + [at_target]

    def _rank(p: Point) -> tuple:
        """Better first by the budget, then calibration accuracy (with labels), then output error."""
        acc = p.measured.get("accuracy")
        return (budget.met(p.measured, evaluate.baseline_accuracy), acc if acc is not None else 0.0,
                -p.measured["rel_error"])

    def verify(p: Point) -> bool:
        if p.measured is None:
            if p.keep:
                p.outcome = prune_model(model, config, data, input_shapes, seed, keep_counts=p.keep,
                                        scores=result.scores)
                p.measured = evaluate(p.outcome.model)
            else:
                p.outcome = structural({})
                p.measured = {"cosine": 1.0, "rel_error": 0.0, "top1_agreement": 1.0,
                              "accuracy": evaluate.baseline_accuracy}
            log(f"{len(p.keep)} groups cut, {target.name} {p.value:.4g}: cosine {p.measured['cosine']:.4f}, "
                f"accuracy {p.measured.get('accuracy')}")
        return budget.met(p.measured, evaluate.baseline_accuracy)

    rivals = []
    if reachable and at_target.keep:
        # The greedy adds errors measured alone; one ratio everywhere is the allocation it must beat.
        uniform = _uniform_point(model, config, target, point, input_shapes)
        if uniform is not None and uniform.keep != at_target.keep:
            verify(at_target)
            verify(uniform)
            if _rank(uniform) > _rank(at_target):
                at_target, uniform = uniform, at_target
                candidates[-1] = at_target
            rivals.append(uniform)
    chosen, status = at_target, "met"
    if not verify(at_target):
        if on_miss == "best":
            good, bad = 0, len(candidates) - 1  # candidates[0] cuts nothing: it always holds
            verify(candidates[0])
            while bad - good > 1:
                mid = (good + bad) // 2
                good, bad = (mid, bad) if verify(candidates[mid]) else (good, mid)
            chosen, status = candidates[good], "backed off"
        else:
            chosen, status = candidates[0], "unchanged"
            verify(chosen)
    return AutoResult(chosen, result, baseline, evaluate.baseline_accuracy, target.met(chosen.value),
                      budget.met(chosen.measured, evaluate.baseline_accuracy), status, at_target, rivals)


def _uniform_point(model: onnx.ModelProto, config: PruneConfig, target: Target,
                   point: Callable[..., Point], input_shapes: dict[str, list[int]] | None) -> Point | None:
    """The smallest single ratio (rounding balanced, as prune_channels does) that meets the target."""
    _, analysis = analyze_model(model, input_shapes)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        plans = plan_groups(analysis.groups, mid, config.round_to, config.min_channels, config.exclude)
        p = point({}, {pl.group.id: pl.keep for pl in plans if pl.group.prunable and pl.removed > 0})
        if target.met(p.value):
            hi, best = mid, p
        else:
            lo = mid
    if best is not None:
        best.label = f"uniform ratio {hi:.4g}"
    return best


def _trim_last_cut(path: list[dict[int, Trial]], i: int, config: PruneConfig, target: Target,
                   point: Callable[..., Point]) -> Point:
    """State i with its last cut eased to the most channels that still meet the target."""
    before, after = path[i - 1], path[i]
    (gid,) = [g for g in after if before.get(g) is not after[g]]
    trial = after[gid]
    upper = before[gid].keep if gid in before else trial.channels
    keep = {g: t.keep for g, t in after.items()}
    options = [n for n in _choices(trial.channels, config.round_to, config.min_channels) if trial.keep < n < upper]
    best = point(after)
    lo, hi = 0, len(options)  # more channels only raise the measure: find the most that still meet it
    while lo < hi:
        mid = (lo + hi) // 2
        p = point(after, {**keep, gid: options[mid]})
        if target.met(p.value):
            best, lo = p, mid + 1
        else:
            hi = mid
    return best


def _alone(t: Trial, baseline_accuracy: float | None) -> dict:
    """A scan trial's measured cost: the group pruned alone to t.keep channels."""
    out = {"kept": t.keep, "macs_saved": t.macs_saved, "rel_error": round(t.rel_error, 6),
           "cosine": None if t.cosine is None else round(t.cosine, 6)}
    if t.accuracy is not None and baseline_accuracy is not None:
        out["accuracy_drop"] = round(baseline_accuracy - t.accuracy, 6)
    return out


def _fidelity(m: dict, baseline_accuracy: float | None) -> str:
    text = f"cosine {m['cosine']:.4f}" if m.get("cosine") is not None else "cosine -"
    if m.get("accuracy") is not None and baseline_accuracy is not None:
        text += f", accuracy drop {100 * (baseline_accuracy - m['accuracy']):.2f} points"
    return text


def _value(target: Target, value: float) -> str:
    return f"x{value:.3f}" if target.name == "MACs kept" else f"{value:.4g} ms"


def describe(result: AutoResult, target: Target, budget: Budget) -> tuple[list[NodeNote], str]:
    """The pass's notes (every scanned group: its ratio and its cost measured alone) and summary line."""
    acc0 = result.baseline_accuracy
    trials: dict[str, list[Trial]] = {}
    for t in result.scan.trials:
        trials.setdefault(t.name, []).append(t)
    keep = result.point.keep
    # the cost of a cut measured alone: its own scan trial, or (uniform) the scanned cut nearest to it
    cut = {ts[0].name: min(ts, key=lambda t: (abs(t.keep - keep[t.group]), t.keep))
           for ts in trials.values() if ts[0].group in keep}
    notes = []
    for note in result.outcome.notes:
        if note.node in trials and note.action in ("pruned", "skipped"):
            figures = dict(note.figures)
            figures["ratio"] = round(1 - figures["kept"] / figures["channels"], 6)
            if note.node in cut:
                figures["cost_alone"] = _alone(cut[note.node], acc0)
            else:  # what the lightest cut would have cost: why the greedy left it
                lightest = max(trials[note.node], key=lambda t: t.keep)
                figures["lightest_cut_alone"] = _alone(lightest, acc0)
                note = NodeNote(note.node, note.op_type, "skipped", "not cut: cheaper cuts per MAC "
                                "reached the target" if result.target_met else "not cut within the budget", figures)
            note = NodeNote(note.node, note.op_type, note.action, note.reason, figures)
        notes.append(note)
    o, m = result.outcome, result.point.measured
    macs = f"MACs {o.macs_before:,} -> {o.macs_after:,} (x{o.macs_after / max(o.macs_before, 1):.3f})"
    figures = {"target": target.name, "limit": target.limit, "value": result.point.value,
               "baseline_value": result.baseline_value, "target_met": result.target_met,
               "budget": budget.describe(), "budget_met": result.budget_met, "status": result.status,
               "macs_before": o.macs_before, "macs_after": o.macs_after, "measured": m,
               "allocation": result.point.label,
               "ratios": {t.name: round(1 - keep[t.group] / t.channels, 6) for t in cut.values()}}
    if result.rivals:
        figures["rivals"] = [{"allocation": r.label, "value": r.value, "measured": r.measured} for r in result.rivals]
    at = result.at_target
    if at is not result.point:
        figures["at_target"] = {"value": at.value, "measured": at.measured, "keep": len(at.keep)}
    notes.append(NodeNote("(model)", "-", "measured", "ratio: auto, on the calibration data", figures))
    value = "" if target.name == "MACs kept" else f", {target.name} {_value(target, result.point.value)}"
    head = (f"auto ({result.point.label}): {len(cut)} of {len(trials)} scanned groups cut; {macs}{value} "
            f"(target {_value(target, target.limit)}); {_fidelity(m, acc0)}")
    for r in result.rivals:
        head += f"; {r.label} at {_value(target, r.value)}: {_fidelity(r.measured, acc0)}"
    reach = "" if target.met(at.value) else (
        f"the target is out of reach at the scanned ratios (deepest cuts: {_value(target, at.value)}); ")
    if result.status == "met":
        tail = f"; budget {budget.describe()} holds" if result.target_met else \
            f"; {reach.rstrip('; ')}; budget {budget.describe()} holds there"
    else:
        miss = f"{reach}at {_value(target, at.value)} the budget {budget.describe()} does not hold " \
               f"({_fidelity(at.measured, acc0)})"
        if result.status == "unchanged":
            tail = f"; {miss}: model left unchanged (on_miss: unchanged)"
        elif not keep:
            tail = f"; {miss}, nor at any fewer cuts of the greedy: model left unchanged"
        else:
            tail = f"; {miss}: stopped at the most pruned point that holds it"
    return notes, head + tail


__all__ = ["AutoResult", "Target", "auto_prune", "describe"]
