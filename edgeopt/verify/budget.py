"""Fidelity budgets measured where the recipe says: its `fidelity: {output, metric}`.

One helper for every library that searches under a budget (quant/mixed.py's `bits: auto`,
prune/auto.py's `ratio: auto`, the sensitivity scan), so a budget means the same thing as the
pipeline's checks and warnings (edgeopt/pipeline.py `_fidelity`):

- output: the named output only (FidelitySpec.select), or every output (no spec / no name);
- metric: what the budget's `min_cosine` bounds there:
    cosine   the cosine of that output against the reference (the default);
    top1     the top-1 agreement, per position along the last axis (as the pipeline's per_position);
    max_abs  1 - max abs error / the reference's output scale (so min_cosine 0.99 allows 1 % of it);
- max_accuracy_drop: the accuracy (argmax of [N, C] scores against labels) of that output.

`Meter(reference, names, spec, labels)` measures candidate outputs; `FidelityBudget` says whether a
measurement holds and in words (`describe`, `where`). The loss a search ranks by (`Meter.loss`) is a
continuous figure of the same output: relative L2 error for cosine, 1 - top-1 agreement for top1 (ties by the
relative error), max abs error / scale for max_abs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.verify.fidelity import FidelitySpec, accuracy, compare, output_scale

SCORE_NAMES = {"cosine": "cosine", "top1": "top-1 agreement", "max_abs": "1 - max abs error / scale"}


def spec_or_default(spec: FidelitySpec | None) -> FidelitySpec:
    return spec if spec is not None else FidelitySpec()


def where(spec: FidelitySpec | None) -> str:
    """Which output and metric, in words: "output 'probs', metric top1" / "all outputs, metric cosine"."""
    spec = spec_or_default(spec)
    out = f"output {spec.output!r}" if spec.output is not None else "all outputs"
    return f"{out}, metric {spec.metric}"


def _flat(outputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs]) if outputs else np.zeros(0)


class Meter:
    """Measures candidate outputs against `reference` (all of the model's outputs, in `names` order) on
    the spec's output and metric."""

    def __init__(self, reference: list[np.ndarray], names: list[str] | None = None,
                 spec: FidelitySpec | None = None, labels: np.ndarray | None = None):
        self.spec = spec_or_default(spec)
        if self.spec.output is not None and (names is None or self.spec.output not in names):
            raise ValueError(f"fidelity output {self.spec.output!r} is not among the outputs {names}")
        self.names = list(names) if names is not None else None
        self.labels = labels
        self.reference = self.focus(reference)
        self._ref = _flat(self.reference)
        self._norm = float(np.linalg.norm(self._ref))
        self.scale = output_scale(self.reference) if self._ref.size else 1.0
        self.baseline_accuracy = accuracy(self.reference, labels)

    def focus(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return outputs if self.spec.output is None else self.spec.select(self.names, outputs)

    def __call__(self, outputs: list[np.ndarray]) -> dict:
        """cosine, top1_agreement, max_abs_error, rel_error, accuracy (None without labels) and score (the
        metric's figure, higher is better; None when it cannot be measured) of the focused output."""
        got = self.focus(outputs)
        m = compare(self.reference, got, per_position=self.spec.metric == "top1")
        flat = _flat(got)
        if flat.shape == self._ref.shape and np.all(np.isfinite(flat)):
            m["rel_error"] = float(np.linalg.norm(flat - self._ref) / max(self._norm, 1e-12))
        else:
            m["rel_error"] = float("inf")
        m["accuracy"] = accuracy(got, self.labels)
        m["score"] = self.score(m)
        return m

    def score(self, m: dict) -> float | None:
        if self.spec.metric == "top1":
            return m.get("top1_agreement")
        if self.spec.metric == "max_abs":
            err = m.get("max_abs_error")
            return None if err is None else 1.0 - err / self.scale
        return m.get("cosine")

    def loss(self, m: dict) -> tuple[float, float]:
        """What a search ranks candidates by, lower first: continuous where the metric is not."""
        rel = m.get("rel_error")
        rel = float("inf") if rel is None else rel
        if self.spec.metric == "top1":
            top = m.get("top1_agreement")
            return (1.0 - top if top is not None else float("inf"), rel)
        if self.spec.metric == "max_abs":
            err = m.get("max_abs_error")
            return (float("inf") if err is None else err / self.scale, rel)
        return (rel, 0.0)


@dataclass(frozen=True)
class FidelityBudget:
    """min_cosine bounds the spec's metric on its output (see the module docstring); max_accuracy_drop the
    accuracy of that output. Either may be None; with both, both must hold."""

    min_cosine: float | None = None
    max_accuracy_drop: float | None = None
    spec: FidelitySpec | None = None

    def met(self, measured: dict, baseline_accuracy: float | None) -> bool:
        ok = True
        if self.max_accuracy_drop is not None:
            acc = measured.get("accuracy")
            ok &= acc is not None and baseline_accuracy is not None and \
                baseline_accuracy - acc <= self.max_accuracy_drop + 1e-12
        if self.min_cosine is not None:
            score = measured.get("score", measured.get("cosine"))
            ok &= score is not None and score >= self.min_cosine
        return bool(ok)

    def describe(self) -> str:
        """The budget in words, with where it is measured when that is not every output by cosine."""
        spec = spec_or_default(self.spec)
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {100 * self.max_accuracy_drop:g} points")
        if self.min_cosine is not None:
            parts.append(f"{SCORE_NAMES[spec.metric]} >= {self.min_cosine:g}")
        text = " and ".join(parts) or "none"
        if spec.output is not None:
            text += f" on output {spec.output!r}"
        return text

    def figure(self, measured: dict, baseline_accuracy: float | None) -> str:
        """What was measured, in the budget's terms: "top-1 agreement 0.9950 on output 'probs'"."""
        spec = spec_or_default(self.spec)
        parts = []
        if self.max_accuracy_drop is not None:
            acc = measured.get("accuracy")
            drop = None if acc is None or baseline_accuracy is None else baseline_accuracy - acc
            parts.append("accuracy drop -" if drop is None else f"accuracy drop {100 * drop:.2f} points")
        if self.min_cosine is not None or not parts:
            score = measured.get("score", measured.get("cosine"))
            parts.append(f"{SCORE_NAMES[spec.metric]} " + ("-" if score is None else f"{score:.5f}"))
        text = ", ".join(parts)
        return text + (f" on output {spec.output!r}" if spec.output is not None else "")


__all__ = ["FidelityBudget", "Meter", "where", "spec_or_default", "SCORE_NAMES"]
