"""A global MAC target for the split passes: per-layer sizes, cheapest error per MAC saved first.

Each layer's options are its sizes within max_error and min_macs_saving, with the MACs each saves and
its relative error (weights-only: all sizes from one SVD; with data: fits on the original model's
patches at up to `max_fits` sizes). The greedy is the pruning one (prune.sensitivity.greedy_path: the
most MACs per unit of squared error added, a layer may jump to a deeper size); the first state that
saves enough is taken, its last cut eased to the least error that still meets the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeopt.prune.sensitivity import greedy_path


@dataclass
class Option:
    """One size of one layer, in the shape the greedy reads (group, macs_saved, rel_error)."""

    group: int  # the layer's index
    size: int
    macs_saved: int
    rel_error: float


@dataclass
class SizePlan:
    sizes: dict[int, int]  # layer index -> size to split at; layers left out stay whole
    errors: dict[int, float]  # the error the plan expects per layer (fits on the original model)
    saved: int  # MACs the plan saves
    met: bool  # saved >= needed


def layer_options(index: int, full: int, before: int, macs_after: Callable[[int], int | None],
                  saving: Callable[[int], float], errors: Callable[[list[int]], dict[int, float]],
                  max_error: float, min_saving: float, max_fits: int = 12) -> list[Option]:
    """The sizes of one layer the target may pick: those saving >= min_saving with error <= max_error."""
    sizes = [s for s in range(1, full + 1) if saving(s) >= min_saving - 1e-12 and macs_after(s) is not None]
    if len(sizes) > max_fits:  # geometric spacing: small sizes save most, their errors differ most
        picks = np.unique(np.round(np.geomspace(sizes[0], sizes[-1], max_fits)).astype(int))
        sizes = [s for s in sizes if s in set(picks.tolist())]
    measured = errors(sizes)
    return [Option(index, s, before - macs_after(s), float(measured[s])) for s in sizes
            if measured[s] <= max_error and before - macs_after(s) > 0]


def plan_sizes(options: list[Option], needed: int) -> SizePlan:
    """Sizes per layer saving at least `needed` MACs, cheapest squared error per MAC saved first."""
    path = greedy_path(options)

    def saved(state: dict[int, Any]) -> int:
        return sum(o.macs_saved for o in state.values())

    hit = next((i for i, state in enumerate(path) if saved(state) >= needed), None)
    if hit is None:
        state = path[-1]
    else:
        state = dict(path[hit])
        if hit:  # ease the last cut: the least error of that layer that still saves enough
            (gid,) = [g for g in state if path[hit - 1].get(g) is not state[g]]
            others = saved(state) - state[gid].macs_saved
            fits = [o for o in options if o.group == gid and others + o.macs_saved >= needed]
            state[gid] = min(fits, key=lambda o: (o.rel_error, o.macs_saved))
    return SizePlan({g: o.size for g, o in state.items()}, {g: o.rel_error for g, o in state.items()},
                    saved(state), saved(state) >= needed)


__all__ = ["Option", "SizePlan", "layer_options", "plan_sizes"]
