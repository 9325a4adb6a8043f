"""Per-layer precision under a fidelity budget: measure, order by saving per fidelity lost, take, back off.

1. Sensitivity: each layer alone in each candidate format (the rest float), one
   probe run each (quant/probe.py: one session, weights fed as inputs); the loss
   is 1 - cosine of the budget's output (the recipe's fidelity output; without one, the output the layer
   hurts most, each output on its own) against the float outputs on a few samples.
   float16's loss is below what a few samples resolve (2^-11 relative rounding):
   it is int8's measured loss scaled by the ratio of their weight error energies.
2. Per layer, the moves float -> ... -> cheapest form along the lower convex hull
   of (loss, cost), so each layer's moves come in falling saving per loss.
3. All layers' moves merged by saving per loss; a prefix of that order is a
   mixed assignment. The prefix whose summed losses (errors of independent
   layers add in energy, so 1 - cosine roughly adds) fit the budget is verified
   end to end; a bisection over the prefix length (undoing the last moves when
   it fails, adding the next when it holds) keeps the longest verified prefix.
4. Fill: the move that broke the budget is dropped with its layer's later
   moves, and the following moves that the budget left over allows are tried
   the same way, until a try adds nothing or the checks run out.
Every assignment returned was measured end to end within the budget, on the recipe's fidelity output with
its metric (edgeopt/verify/budget.py: min_cosine bounds the cosine, the top-1 agreement per position, or
1 - max abs error / scale).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeopt.progress import steps
from edgeopt.verify.budget import FidelityBudget, Meter, accuracy_drop, spec_or_default
from edgeopt.verify.fidelity import Cosines, FidelitySpec

FLOAT = "float"
CANDIDATES = ("float", "float16", "int8", "int4_block", "int4")  # in falling bytes
LOSS_FLOOR = 1e-12  # a measured loss at or below the noise floor still orders by saving


@dataclass
class Layer:
    """One weight slot: its candidate forms' decoded weights, losses and objective costs."""

    name: str  # the weight's name (the probe feeds it)
    decoded: dict[str, np.ndarray]  # candidate -> what the graph would compute with (float excluded)
    cost: dict[str, float]  # candidate -> objective cost, float included
    loss: dict[str, float] = field(default_factory=dict)  # candidate -> 1 - cosine, this layer alone
    measured: dict[str, bool] = field(default_factory=dict)  # False: derived (float16), not run
    out_of_reach: list[str] = field(default_factory=list)  # narrower than a form already over the budget


@dataclass
class Move:
    layer: int
    to: str
    saving: float
    dloss: float

    @property
    def rate(self) -> float:
        return self.saving / max(self.dloss, LOSS_FLOOR)


@dataclass
class Budget:
    """min_cosine of the outputs, or (labels given) max_accuracy_drop on them; measured on the recipe's
    fidelity output and metric (spec, with the model's output `names`; edgeopt/verify/budget.py)."""

    min_cosine: float
    max_accuracy_drop: float | None = None
    labels: np.ndarray | None = None
    spec: FidelitySpec | None = None
    names: list[str] | None = None

    @property
    def by_accuracy(self) -> bool:
        return self.max_accuracy_drop is not None and self.labels is not None

    @property
    def by_cosine(self) -> bool:
        """min_cosine bounds the cosine itself (not top-1 or max abs): single-layer losses add up to it."""
        return not self.by_accuracy and spec_or_default(self.spec).metric == "cosine"

    def shared(self) -> FidelityBudget:
        return FidelityBudget(None if self.by_accuracy else self.min_cosine,
                              self.max_accuracy_drop if self.by_accuracy else None, self.spec)

    def meter(self, reference: list[np.ndarray]) -> Meter:
        return Meter(reference, self.names, self.spec, self.labels if self.by_accuracy else None)

    def describe(self) -> str:
        return self.shared().describe()


@dataclass
class Outcome:
    choice: dict[str, str]  # layer name -> candidate
    fidelity: dict  # of the chosen prefix: cosine (and accuracy, accuracy_drop) on the verification samples
    predicted_loss: float  # summed single-layer losses of the chosen moves
    moves_taken: int
    moves_total: int
    verifications: int
    probe_runs: int
    reference_accuracy: float | None = None
    trail: list[tuple[int, bool]] = field(default_factory=list)  # (prefix length, held) per verification


def weight_error_energy(original: np.ndarray, decoded: np.ndarray) -> float:
    err = decoded.astype(np.float64) - original
    return float(np.vdot(err, err))


def hull_moves(index: int, layer: Layer) -> list[Move]:
    """The layer's moves from float along the lower convex hull of (loss, cost): at each step the
    cheaper form with the most saving per loss added (ties: the further one)."""
    moves, here = [], FLOAT
    while True:
        best = None
        for cand, cost in layer.cost.items():
            if cand == here or cost >= layer.cost[here] or cand not in layer.loss:
                continue
            move = Move(index, cand, layer.cost[here] - cost, max(layer.loss[cand] - layer.loss[here], 0.0))
            if best is None or (move.rate, move.saving) > (best.rate, best.saving):
                best = move
        if best is None:
            return moves
        moves.append(best)
        here = best.to


def order_moves(layers: list[Layer]) -> list[Move]:
    """Every layer's hull moves merged by saving per loss, each layer's own moves in their order."""
    chains = [hull_moves(i, layer) for i, layer in enumerate(layers)]
    heap = [(-c[0].rate, -c[0].saving, i, 0) for i, c in enumerate(chains) if c]
    heapq.heapify(heap)
    out = []
    while heap:
        _, _, i, k = heapq.heappop(heap)
        out.append(chains[i][k])
        if k + 1 < len(chains[i]):
            nxt = chains[i][k + 1]
            heapq.heappush(heap, (-nxt.rate, -nxt.saving, i, k + 1))
    return out


def assignment(layers: list[Layer], taken: list[Move]) -> dict[str, str]:
    choice = {layer.name: FLOAT for layer in layers}
    for move in taken:
        choice[layers[move.layer].name] = move.to
    return choice


def measure(layers: list[Layer], originals: dict[str, np.ndarray], probe_run: Callable[[dict], list],
            limit: float | None = None, focus: Callable[[list], list] = lambda outputs: outputs) -> None:
    """Fill each layer's loss per candidate: integer formats measured alone (widest first), float16 scaled
    from int8. The loss is 1 - cosine of the budget's output (`focus` picks it from all outputs). A layer
    whose wider format alone already costs more than `limit` (the whole budget) is not measured in
    narrower ones: no search could take them. Each output counts on its own: the loss is that of the
    output this layer hurts most (a score head next to a box head of 100x its norm)."""
    cosines = Cosines(focus(probe_run({})))

    def loss(name: str, decoded: np.ndarray) -> float:
        return 1.0 - cosines.worst(focus(probe_run({name: decoded})))

    with steps("bits auto: layer sensitivity", len(layers)) as advance:
        for layer in layers:
            _measure_layer(layer, originals, loss, limit)
            advance()


def _measure_layer(layer: Layer, originals: dict[str, np.ndarray], loss: Callable[[str, np.ndarray], float],
                   limit: float | None) -> None:
    layer.loss[FLOAT] = 0.0
    layer.measured[FLOAT] = True
    for cand in [c for c in layer.decoded if c != "float16"]:
        if limit is not None and any(v > limit for v in layer.loss.values()):
            del layer.decoded[cand]  # a narrower form of an over-budget layer
            layer.out_of_reach.append(cand)
            continue
        layer.loss[cand], layer.measured[cand] = loss(layer.name, layer.decoded[cand]), True
    if "float16" in layer.decoded:
        w = originals[layer.name]
        e16 = weight_error_energy(w, layer.decoded["float16"])
        e8 = weight_error_energy(w, layer.decoded["int8"]) if "int8" in layer.loss else 0.0
        if e8 > 0:
            layer.loss["float16"] = max(layer.loss["int8"], 0.0) * e16 / e8
            layer.measured["float16"] = False
        else:  # nothing to scale from: run it
            layer.loss["float16"], layer.measured["float16"] = loss(layer.name, layer.decoded["float16"]), True


def search(layers: list[Layer], originals: dict[str, np.ndarray], probe_run: Callable[[dict], list],
           verify_run: Callable[[dict], list], budget: Budget, max_verifications: int = 16) -> Outcome:
    """The moves kept after end-to-end checks (see the module docstring).

    probe_run / verify_run: swapped weights -> outputs, on the sensitivity samples / on the
    verification samples (with labels, all of them).
    """
    verify_ref = verify_run({})
    meter = budget.meter(verify_ref)
    shared = budget.shared()
    measure(layers, originals, probe_run, 1.0 - budget.min_cosine if budget.by_cosine else None, meter.focus)
    moves = order_moves(layers)
    ref_acc = meter.baseline_accuracy if budget.by_accuracy else None
    trail: list[tuple[int, bool]] = []

    def check(taken: list[Move]) -> tuple[bool, dict]:
        choice = assignment(layers, taken)
        m = meter(verify_run({n: by_name[n].decoded[c] for n, c in choice.items() if c != FLOAT}))
        fid = {k: m[k] for k in ("cosine", "score", "top1_agreement", "max_abs_error", "worst_output")}
        if budget.by_accuracy:
            fid.update(accuracy=m["accuracy"], accuracy_drop=accuracy_drop(m, ref_acc))
        ok = shared.met(m, ref_acc)
        trail.append((len(taken), ok))
        return ok, fid

    def longest(base: list[Move], extra: list[Move], first: int, fid: dict) -> tuple[int, dict, bool]:
        """The longest prefix of extra that holds on top of base (bisection, first probe at `first`),
        its fidelity, and whether extra[that length] is known to break the budget."""
        lo, hi = 0, len(extra) + 1  # lo holds; hi fails or is past the end
        k = min(max(first, 1), len(extra))
        while hi - lo > 1 and len(trail) < max_verifications:
            ok, got = check(base + extra[:k])
            lo, hi, fid = (k, hi, got) if ok else (lo, k, fid)
            k = (lo + hi) // 2
        return lo, fid, hi == lo + 1 and lo < len(extra)

    by_name = {layer.name: layer for layer in layers}
    limit = 1.0 - budget.min_cosine
    fid = {"cosine": 1.0, "score": 1.0, "top1_agreement": 1.0, "max_abs_error": 0.0,
           **({"accuracy": ref_acc, "accuracy_drop": 0.0} if budget.by_accuracy else {})}
    # 1. the longest prefix of the ordered moves; the first try is what the summed losses allow
    cum = np.cumsum([m.dloss for m in moves]) if moves else np.zeros(0)
    first = int(np.searchsorted(cum, limit, side="right")) if budget.by_cosine else len(moves) // 2
    n, fid, culprit = longest([], moves, first, fid)
    taken, rest = moves[:n], moves[n:]
    # 2. fill: a move that broke the budget (and that layer's later moves) is dropped; the moves after
    # it that the budget left over allows (by their summed losses) are tried, and so on
    while culprit and rest and len(trail) < max_verifications:
        blocked = {rest[0].layer}
        spare = limit - (1.0 - fid["cosine"]) if budget.by_cosine else float("inf")
        extra = []
        for move in rest[1:]:
            if move.layer in blocked or move.dloss > spare:
                blocked.add(move.layer)  # a layer's moves are taken in their order or not at all
                continue
            extra.append(move)
            spare -= move.dloss
        if not extra:
            break
        n, fid, culprit = longest(taken, extra, len(extra), fid)
        taken = taken + extra[:n]
        rest = extra[n:]
    return Outcome(choice=assignment(layers, taken), fidelity=fid,
                   predicted_loss=float(sum(m.dloss for m in taken)), moves_taken=len(taken),
                   moves_total=len(moves), verifications=len(trail), probe_runs=0, reference_accuracy=ref_acc,
                   trail=trail)
