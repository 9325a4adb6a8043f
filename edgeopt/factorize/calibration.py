"""The data side of a data-weighted split: target outputs, a held-out share, the refit and the error.

Given the patches a layer sees (and, for a layer after earlier splits, the
patches it saw in the original model at the same positions), a
`CalibrationFit` holds the outputs the split should reproduce. It keeps the
patches of a quarter of the calibration images out of every fit, so the
error it reports is measured on images the fit never saw: with few images
and a wide layer an in-sample error is far too optimistic (and patches of
one image are too alike to hold out one by one).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeopt.factorize.lowrank import refit_linear, relative_error

HELD_OUT = 0.25  # share of the calibration images whose patches are kept for measuring the error
MIN_IMAGES = 4  # with fewer images, patches are held out one by one (and with fewer than 8, none)
REFIT_SAMPLES_PER_WEIGHT = 4  # refit only with this many fitting patches per fitted weight
MAX_REFIT = 4096  # and at most this many inputs per output (the size of the least-squares system)


class CalibrationFit:
    """Targets and held-out bookkeeping for one layer.

    weight [O, C, KH, KW], bias [O] or None; patches [S, C, KH, KW] from
    `sample_patches`; reference: the original model's patches at the same
    positions (None: the layer's inputs have not changed); images [S]: the
    calibration input each patch comes from (None: all different).
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, patches: np.ndarray,
                 reference: np.ndarray | None = None, images: np.ndarray | None = None):
        self.patches = np.asarray(patches, dtype=np.float64)
        n = len(self.patches)
        self.bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        flat_w = weight.reshape(weight.shape[0], -1).astype(np.float64)
        own = self.patches.reshape(n, -1) @ flat_w.T + self.bias
        if reference is None:
            self.target = own
        else:
            self.target = np.asarray(reference, dtype=np.float64).reshape(n, -1) @ flat_w.T + self.bias
        self.fit_index, self.eval_index = _hold_out(n, images)
        # how far the unsplit layer already is from the original model (0 without reference)
        self.inherited_error = 0.0 if reference is None else relative_error(
            own[self.eval_index], self.target[self.eval_index])

    @property
    def fit_patches(self) -> np.ndarray:
        """The patches the factors are fitted on (the held-out ones excluded)."""
        return self.patches[self.fit_index]

    def finish(self, first_stage: Callable[[np.ndarray], np.ndarray], second: np.ndarray,
               allow_refit: bool = True) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """Refit the second stage on the fitting patches if it can, then measure the held-out error.

        first_stage maps patches [n, C, KH, KW] to the second stage's inputs
        z [n, K]; second [O, K] are its weights from the factorization.
        Returns (second-stage weights, bias, relative error, refitted).
        """
        k = second.shape[1]
        weights, bias, refitted = second, self.bias, False
        if allow_refit and k <= MAX_REFIT and len(self.fit_index) >= REFIT_SAMPLES_PER_WEIGHT * (k + 1):
            z_fit = first_stage(self.patches[self.fit_index])
            weights, bias = refit_linear(z_fit, self.target[self.fit_index], second, self.bias)
            refitted = True
        z_eval = first_stage(self.patches[self.eval_index])
        error = relative_error(z_eval @ weights.T + bias, self.target[self.eval_index])
        return weights, bias, error, refitted


def _hold_out(n: int, images: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(fitting, held-out) patch indices: whole images held out when there are enough of them."""
    rng = np.random.default_rng(n)
    distinct = np.unique(images) if images is not None else np.arange(0)
    if len(distinct) >= MIN_IMAGES:
        held_images = rng.permutation(distinct)[:max(1, int(len(distinct) * HELD_OUT))]
        held = np.isin(images, held_images)
    elif n >= 2 * MIN_IMAGES:
        held = np.zeros(n, dtype=bool)
        held[rng.permutation(n)[:int(n * HELD_OUT)]] = True
    else:  # too little to hold anything out: in-sample
        return np.arange(n), np.arange(n)
    return np.flatnonzero(~held), np.flatnonzero(held)
