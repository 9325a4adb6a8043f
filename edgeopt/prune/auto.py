"""`ratio: auto`: per-group ratios that meet a MAC or latency target within a fidelity budget.

1. the sensitivity scan (sensitivity.scan): every group pruned alone at each scan ratio, measured;
2. three allocations at the target, each verified on the data (with reconstruction when configured):
   - "in context": a few rounds; each round measures every group's next cut (its next scan ratio) on the
     network as pruned so far (reconstructed), takes the cuts with the most MACs saved per squared
     output error added until a share of the MACs still to save, commits them and re-measures. Errors of
     cuts that interact (a cut that is cheap alone and costly next to another) are seen as they are;
   - "greedy": the scan's greedy (sensitivity.greedy_path), single-group errors added as if independent;
   - "uniform ratio R": one ratio everywhere, the smallest that meets the target;
   the last cut of the first two is eased to the most channels that still meet the target, so the
   target is not overshot by a whole scan step;
3. the best on the calibration data (the budget first, then the continuous error of the budget's output,
   verify.budget.Meter.loss) is kept, so the result is never worse than uniform there; then a few
   exchanges (accuracy-aware, as NNCF's): channels moved from the cut that cost the most per MAC to the
   group whose next cut costs the least, each verified and kept only when it cuts the calibration
   error by EXCHANGE_GAIN (smaller gains do not carry over to held-out data);
4. when the kept allocation misses the budget: the longest prefix of the greedy that holds it
   (bisection), or nothing, as the caller asks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from edgeopt.pass_types import NodeNote
from edgeopt.progress import steps
from edgeopt.prune.core import PruneConfig, PruneOutcome, analyze_model, prune_model
from edgeopt.prune.plan import _choices, plan_groups
from edgeopt.prune.sensitivity import Scan, Trial, _options, greedy_path, scan
from edgeopt.verify.budget import FidelityBudget, where

ROUNDS = 3  # in-context rounds (the first from the scan's figures); the last ones take every cut still needed
MEASURED = 3  # a round re-measures at least this many groups' next cuts (and at least half of them)
SHARE = 0.5  # of the MACs still to save, what one in-context round takes before re-measuring
EXCHANGES = 3  # verified exchange tries after the allocations are compared
# An exchange is kept only when it cuts the calibration error by this share: smaller gains on a few hundred
# samples are noise the held-out data does not repeat (resnet_digits, thinet: cosine 0.9922 -> 0.9923 on
# the calibration set, then 0.19 -> 0.74 points of accuracy lost on the test set).
EXCHANGE_GAIN = 0.05
COST_FLOOR = 1e-9  # squared relative error below which a cut counts as free (measurement noise)


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
    label: str = "greedy"  # "in context", "uniform ratio R", "... + N exchanges": which allocation this is


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
    evaluations: int = 0  # whole-network measurements (scan included)
    fidelity_on: str = "every output (the worst), metric cosine"

    @property
    def outcome(self) -> PruneOutcome:
        return self.point.outcome


def auto_prune(model: onnx.ModelProto, config: PruneConfig, target: Target, budget: FidelityBudget,
               data: dict[str, np.ndarray], labels: np.ndarray | None = None,
               input_shapes: dict[str, list[int]] | None = None, seed: int = 0,
               ratios: tuple[float, ...] = (0.25, 0.5, 0.75), on_miss: str = "best",
               log: Callable[[str], None] = lambda m: None, rounds: int = ROUNDS,
               exchanges: int = EXCHANGES) -> AutoResult:
    """Prune `model` (not modified) to `target` within `budget` (on budget.spec's output and metric),
    measured on `data` (and `labels`).

    config.ratio and config.balance are ignored: the channel counts come from the scan.
    on_miss: "best" returns the most pruned point that holds the budget, "unchanged" the input model.
    rounds 0: no in-context allocation; exchanges 0: no exchanges.
    """
    config = dataclasses.replace(config, ratio=0.0, balance=False)
    count_only = dataclasses.replace(config, reconstruct=False)
    result, evaluate = scan(model, config, list(ratios), data, labels, data, input_shapes, seed, log=log,
                            spec=budget.spec)
    counter = {"n": len(result.trials)}
    path = greedy_path(result.trials)

    def structural(keep: dict[int, int]) -> PruneOutcome:
        return prune_model(model, count_only, data, input_shapes, seed, keep_counts=keep, scores=result.scores)

    def point(state: dict[int, Trial], keep: dict[int, int] | None = None) -> Point:
        keep = {g: t.keep for g, t in state.items()} if keep is None else keep
        return Point(state, keep, target.measure(structural(keep).model))

    def measure(keep: dict[int, int]) -> tuple[PruneOutcome, dict]:
        counter["n"] += 1
        out = prune_model(model, config, data, input_shapes, seed, keep_counts=keep, scores=result.scores,
                          targets=result.targets)
        return out, evaluate(out.model)

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
        """Better first by the budget, then the continuous error of the budget's output (accuracy on a
        few hundred samples moves in whole images: it only breaks ties)."""
        acc = p.measured.get("accuracy")
        return (budget.met(p.measured, evaluate.baseline_accuracy), tuple(-x for x in evaluate.loss(p.measured)),
                acc if acc is not None else 0.0)

    def verify(p: Point) -> bool:
        if p.measured is None:
            if p.keep:
                p.outcome, p.measured = measure(p.keep)
            else:
                p.outcome = structural({})
                p.measured = {"cosine": 1.0, "score": 1.0, "rel_error": 0.0, "max_abs_error": 0.0,
                              "top1_agreement": 1.0, "accuracy": evaluate.baseline_accuracy}
            log(f"{p.label}: {len(p.keep)} groups cut, {target.name} {p.value:.4g}: "
                f"{budget.figure(p.measured, evaluate.baseline_accuracy)}")
        return budget.met(p.measured, evaluate.baseline_accuracy)

    rivals: list[Point] = []
    if reachable and at_target.keep:
        # The greedy adds errors measured alone; the in-context rounds and one ratio everywhere are the
        # allocations it must beat (and they it), all verified at the same target.
        contenders = [at_target]
        context = None
        if rounds > 0:
            context = _in_context(result, target, structural, point, measure, evaluate, config, baseline, rounds)
            if context is not None:
                contenders.append(context.point)
        uniform = _uniform_point(model, config, target, point, input_shapes)
        if uniform is not None:
            contenders.append(uniform)
        unique: list[Point] = []
        for p in contenders:
            same = next((q for q in unique if q.keep == p.keep), None)
            if same is None:
                unique.append(p)
            else:  # one allocation reached two ways: one verification, both names
                same.label += f" = {p.label}"
        for p in unique:
            verify(p)
        best = max(unique, key=_rank)  # ties: the first (greedy, in context, uniform)
        if exchanges > 0 and context is not None:
            def clearly_better(p: Point, q: Point) -> bool:
                rp, rq = _rank(p), _rank(q)
                if rp[0] != rq[0]:
                    return rp[0]  # only p holds the budget
                return evaluate.loss(p.measured)[0] < (1 - EXCHANGE_GAIN) * evaluate.loss(q.measured)[0]

            best = _exchange(best, context, result, target, config, point, verify, clearly_better, exchanges)
        rivals = [p for p in unique if p is not best]
        at_target = best
        candidates[-1] = at_target
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
                      budget.met(chosen.measured, evaluate.baseline_accuracy), status, at_target, rivals,
                      counter["n"], where(budget.spec))


@dataclass
class _Context:
    """The in-context allocation and what its rounds measured, for the exchanges."""

    point: Point
    taken_rate: dict[int, float]  # group -> MACs saved per squared error of its last cut, measured in context
    next_rate: dict[int, float]  # group -> the same for its next cut, measured in the last round
    levels: dict[int, list[int]]  # group -> channel counts it may keep, most first (length, then the scan's)


def _rate(gain: float, cost: float) -> float:
    return gain / max(cost, COST_FLOOR)


def _in_context(result: Scan, target: Target, structural, point, measure, evaluate, config: PruneConfig,
                baseline: float, rounds: int) -> _Context | None:
    """The in-context rounds (see the module docstring); None when they cannot reach the target."""
    options = _options(result.trials)
    full = {g: ts[0].channels for g, ts in options.items()}
    levels = {g: sorted({t.keep for t in ts} | {full[g]}, reverse=True) for g, ts in options.items()}
    macs0 = result.macs_before
    keep: dict[int, int] = {}
    err2, saved, value = 0.0, 0, baseline
    taken_rate: dict[int, float] = {}
    next_rate: dict[int, float] = {}
    last_round: list[tuple[int, int]] = []  # (group, keep before) of the last round's cuts, best rate first
    r = 0
    with steps("pruning in context", (rounds - 1) * max(MEASURED, -(-len(options) // 2))) as advance:
        while not target.met(value) and r < rounds + 2:
            cands = []
            nexts = {g: next((k for k in lv if k < keep.get(g, full[g])), None) for g, lv in levels.items()}
            nexts = {g: k for g, k in nexts.items() if k is not None}
            # in context, only the most promising half by their last measured rate is re-measured: a
            # cheap cut turned costly by its neighbours is what rounds are for
            order = sorted(nexts, key=lambda g: (-next_rate.get(g, np.inf), g))
            for g in order[:len(order) if not keep else max(MEASURED, -(-len(order) // 2))]:
                nxt = nexts[g]
                if not keep:  # nothing cut yet: the scan measured exactly this
                    t = next(t for t in options[g] if t.keep == nxt)
                    gain, cost = t.macs_saved, t.rel_error ** 2
                else:
                    out, m = measure({**keep, g: nxt})
                    gain, cost = out.macs_saved - saved, m["rel_error"] ** 2 - err2
                    advance()
                next_rate[g] = _rate(gain, cost)
                if gain > 0:
                    cands.append((_rate(gain, cost), gain, g, nxt))
            if not cands:
                return None  # every group at its deepest scanned cut: the target is out of reach this way
            cands.sort(key=lambda c: (-c[0], -c[1], c[2]))
            # MACs still to save: the target's measure taken as proportional to the MACs left
            need = (macs0 - saved) * max(0.0, 1.0 - target.limit / max(value, 1e-30))
            quota = need if r >= rounds - 1 else SHARE * need
            last_round, got = [], 0
            for rate, gain, g, nxt in cands:
                if got >= quota and last_round:
                    break
                last_round.append((g, keep.get(g, full[g])))
                keep[g] = nxt
                taken_rate[g] = rate
                got += gain
            counted = structural(keep)
            value, saved = target.measure(counted.model), counted.macs_saved
            if not target.met(value):  # the next round's costs are differences from this state's error
                err2 = measure(keep)[1]["rel_error"] ** 2
            r += 1
    if not target.met(value):
        return None
    # ease the round's last cuts (least efficient first) to the most channels that still meet the target
    final = Point({}, dict(keep), value, label="in context")
    for g, before in reversed(last_round):
        ups = [n for n in _choices(full[g], config.round_to, config.min_channels) if final.keep[g] < n <= before]
        lo, hi, best = 0, len(ups), None
        while lo < hi:  # more channels only raise the measure: the most that still meet it
            mid = (lo + hi) // 2
            p = point({}, {**final.keep, g: ups[mid]})
            if target.met(p.value):
                best, lo = p, mid + 1
            else:
                hi = mid
        if best is None:
            break
        if best.keep[g] >= full[g]:
            del best.keep[g]
        best.label = "in context"
        final = best
        if g in final.keep and final.keep[g] < before:
            break  # eased, not undone: the next cut back is needed
    return _Context(final, taken_rate, next_rate, levels)


def _exchange(best: Point, context: _Context, result: Scan, target: Target, config: PruneConfig,
              point, verify, better, tries: int) -> Point:
    """Accuracy-aware moves from `best`: ease the cut that cost the most per MAC in context by one level
    and cut the group whose next cut cost the least deeper, to the most channels that meet the target
    again; verified, kept only when better(moved, best). At most `tries` verifications."""
    full = {t.group: t.channels for t in result.trials}
    done, tried = 0, set()
    while done < tries:
        cut = [g for g in best.keep if best.keep[g] < full[g]]
        donors = sorted(cut, key=lambda g: context.taken_rate.get(g, np.inf))
        moved = None
        for d in donors:
            ups = [k for k in reversed(context.levels[d]) if k > best.keep[d]]
            if not ups:
                continue
            eased = {**best.keep, d: ups[0]}
            if eased[d] >= full[d]:
                del eased[d]
            receivers = sorted((g for g in full if g != d and context.next_rate.get(g) is not None),
                               key=lambda g: -context.next_rate[g])
            for r in receivers:
                now = eased.get(r, full[r])
                downs = [n for n in _choices(full[r], config.round_to, config.min_channels) if n < now]
                # the most channels that meet the target again (fewer channels only lower the measure)
                lo, hi, p = 0, len(downs), None
                while lo < hi:
                    mid = (lo + hi) // 2
                    q = point({}, {**eased, r: downs[mid]})
                    if target.met(q.value):
                        p, lo = q, mid + 1
                    else:
                        hi = mid
                if p is None:
                    continue
                key = tuple(sorted(p.keep.items()))
                if key in tried:
                    continue
                tried.add(key)
                moved = p
                break
            if moved is not None:
                break
        if moved is None:
            return best
        moved.label = best.label if "+" in best.label else f"{best.label} + exchanges"
        verify(moved)
        done += 1
        if better(moved, best):
            best = moved
    return best


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


def _fidelity(m: dict, baseline_accuracy: float | None, budget: FidelityBudget) -> str:
    """The measured figures the budget looks at, then the cosine and accuracy drop when they are not it."""
    text = budget.figure(m, baseline_accuracy)
    extra = []
    if "cosine" not in text and m.get("cosine") is not None:
        extra.append(f"cosine {m['cosine']:.4f}")
    if "accuracy" not in text and m.get("accuracy") is not None and baseline_accuracy is not None:
        extra.append(f"accuracy drop {100 * (baseline_accuracy - m['accuracy']):.2f} points")
    return text + "".join(f", {e}" for e in extra)


def _value(target: Target, value: float) -> str:
    return f"x{value:.3f}" if target.name == "MACs kept" else f"{value:.4g} ms"


def describe(result: AutoResult, target: Target, budget: FidelityBudget) -> tuple[list[NodeNote], str]:
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
               "allocation": result.point.label, "fidelity_on": result.fidelity_on,
               "evaluations": result.evaluations,
               "ratios": {t.name: round(1 - keep[t.group] / t.channels, 6) for t in cut.values()}}
    if result.rivals:
        figures["rivals"] = [{"allocation": r.label, "value": r.value, "measured": r.measured} for r in result.rivals]
    at = result.at_target
    if at is not result.point:
        figures["at_target"] = {"value": at.value, "measured": at.measured, "keep": len(at.keep)}
    notes.append(NodeNote("(model)", "-", "measured", "ratio: auto, on the calibration data", figures))
    value = "" if target.name == "MACs kept" else f", {target.name} {_value(target, result.point.value)}"
    head = (f"auto ({result.point.label}): {len(cut)} of {len(trials)} scanned groups cut; {macs}{value} "
            f"(target {_value(target, target.limit)}); {_fidelity(m, acc0, budget)}")
    for r in result.rivals:
        head += f"; {r.label} at {_value(target, r.value)}: {_fidelity(r.measured, acc0, budget)}"
    reach = "" if target.met(at.value) else (
        f"the target is out of reach at the scanned ratios (deepest cuts: {_value(target, at.value)}); ")
    if result.status == "met":
        tail = f"; budget {budget.describe()} holds" if result.target_met else \
            f"; {reach.rstrip('; ')}; budget {budget.describe()} holds there"
    else:
        miss = f"{reach}at {_value(target, at.value)} the budget {budget.describe()} does not hold " \
               f"({_fidelity(at.measured, acc0, budget)})"
        if result.status == "unchanged":
            tail = f"; {miss}: model left unchanged (on_miss: unchanged)"
        elif not keep:
            tail = f"; {miss}, nor at any fewer cuts of the greedy: model left unchanged"
        else:
            tail = f"; {miss}: stopped at the most pruned point that holds it"
    return notes, head + tail + f" (measured on {result.fidelity_on}; {result.evaluations} network evaluations)"


__all__ = ["AutoResult", "Target", "auto_prune", "describe"]
