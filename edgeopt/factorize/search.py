"""Choosing the depth multiplier / rank of a split: the smallest that meets the error budget and pays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Choice:
    split: Any | None  # the fitted split, None when the layer is skipped
    reason: str = ""  # why the layer was skipped
    tried: dict[int, float] | None = None  # size -> error of the fits evaluated


def choose_size(full: int, requested: int | None, saving: Callable[[int], float],
                fit: Callable[[int], Any], max_error: float, min_saving: float,
                weight_errors: np.ndarray | None = None, what: str = "m") -> Choice:
    """Fit the smallest size in 1..full (or the requested one) whose error is <= max_error
    and whose MAC saving is >= min_saving.

    saving(size) is the fraction of the layer's MACs the split saves; fit(size)
    returns an object with `.error`. weight_errors[size], when given, is the
    error of each size known in advance (weights-only fits), so one fit is
    enough; otherwise the sizes are bisected, assuming the error falls as the
    size grows.
    """
    sizes = [min(requested, full)] if requested is not None else list(range(1, full + 1))
    affordable = [s for s in sizes if saving(s) >= min_saving - 1e-12]
    if not affordable:
        s = sizes[0]
        lead = f"{what}={s}" if requested is not None else f"even {what}=1"
        return Choice(None, f"{lead} saves {saving(s):.0%} of the layer's MACs, "
                            f"less than min_macs_saving {min_saving:.0%}")
    largest = affordable[-1]
    limit = "" if requested is not None else f" (the largest {what} that saves {min_saving:.0%} of its MACs)"
    if weight_errors is not None:
        for s in affordable:
            if weight_errors[s] <= max_error:
                return Choice(fit(s), tried={s: float(weight_errors[s])})
        return Choice(None, f"weight error {weight_errors[largest]:.3g} at {what}={largest}{limit} "
                            f"exceeds max_error {max_error:g}", tried={largest: float(weight_errors[largest])})
    fits: dict[int, Any] = {}

    def fitted(index: int):
        s = affordable[index]
        if s not in fits:
            fits[s] = fit(s)
        return fits[s]

    if fitted(len(affordable) - 1).error > max_error:
        tried = {s: f.error for s, f in fits.items()}
        return Choice(None, f"output error {fits[largest].error:.3g} at {what}={largest}{limit} "
                            f"exceeds max_error {max_error:g}", tried=tried)
    lo, hi = 0, len(affordable) - 1  # invariant: affordable[hi] meets the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if fitted(mid).error <= max_error:
            hi = mid
        else:
            lo = mid + 1
    return Choice(fitted(hi), tried={s: f.error for s, f in sorted(fits.items())})
