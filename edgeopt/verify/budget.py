"""Fidelity budgets measured where the recipe says: its `fidelity: {output, metric}`.

One helper for every library that searches under a budget (quant/mixed.py's `bits: auto`,
prune/auto.py's `ratio: auto`, the sensitivity scan), so a budget means the same thing as the
pipeline's checks and warnings (edgeopt/pipeline.py `_fidelity`):

- output: the named output only (FidelitySpec.select), or every output, each on its own, the worst one
  counting (no spec / no name): a budget holds on every output, never on one pooled figure;
- metric: what the budget's `min_cosine` bounds there:
    cosine   the cosine of that output against the reference (the default);
    top1     the top-1 agreement, per position along the last axis (as the pipeline's per_position);
    max_abs  1 - max abs error / the reference's output scale (so min_cosine 0.99 allows 1 % of it);
- max_accuracy_drop: the accuracy (argmax of [N, C] scores against labels) of the output(s) it applies to,
  the largest drop counting.

`Meter(reference, names, spec, labels)` measures candidate outputs (verify.fidelity.compare: the figures
per output and the worst); `FidelityBudget` says whether a measurement holds and in words (`describe`,
`where`). The loss a search ranks by (`Meter.loss`) is a continuous figure of the worst output: relative L2
error for cosine, 1 - top-1 agreement for top1 (ties by the relative error), max abs error / scale for
max_abs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.verify.fidelity import FidelitySpec, accuracies, accuracy, compare, output_names, output_scale

SCORE_NAMES = {"cosine": "cosine", "top1": "top-1 agreement", "max_abs": "1 - max abs error / scale"}


def spec_or_default(spec: FidelitySpec | None) -> FidelitySpec:
    return spec if spec is not None else FidelitySpec()


def where(spec: FidelitySpec | None) -> str:
    """Which output and metric, in words: "output 'probs', metric top1" / "every output, metric cosine"."""
    spec = spec_or_default(spec)
    out = f"output {spec.output!r}" if spec.output is not None else "every output (the worst)"
    return f"{out}, metric {spec.metric}"


class Meter:
    """Measures candidate outputs against `reference` (all of the model's outputs, in `names` order) on
    the spec's output and metric: each output on its own, the worst of those looked at counting."""

    def __init__(self, reference: list[np.ndarray], names: list[str] | None = None,
                 spec: FidelitySpec | None = None, labels: np.ndarray | None = None):
        self.spec = spec_or_default(spec)
        if self.spec.output is not None and (names is None or self.spec.output not in names):
            raise ValueError(f"fidelity output {self.spec.output!r} is not among the outputs {names}")
        self.names = output_names(reference, names)
        self.labels = labels
        self.reference = list(reference)
        self.looked_at = [n for n in self.names if self.spec.output in (None, n)]
        self._refs = {n: np.asarray(r, np.float64).ravel() for n, r in zip(self.names, self.reference)
                      if n in self.looked_at}
        self._norms = {n: float(np.linalg.norm(r)) for n, r in self._refs.items()}
        self.scales = {n: output_scale([r]) if r.size else 1.0 for n, r in self._refs.items()}
        self.scale = max(self.scales.values(), default=1.0)
        self.baseline = accuracies(self.reference, labels, self.names)
        self.baseline_accuracy = accuracy(self.reference, labels, self.names, self.spec.output)

    def focus(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs the budget looks at (all, or the named one), in model order."""
        return outputs if self.spec.output is None else self.spec.select(self.names, outputs)

    def __call__(self, outputs: list[np.ndarray]) -> dict:
        """cosine, top1_agreement, max_abs_error (each the worst over the outputs looked at), rel_error (the
        largest relative L2 error), outputs and worst_output (verify.fidelity.compare), accuracy and
        accuracy_drop (the largest drop; None without labels) and score (the metric's figure of the worst
        output, higher is better; None when it cannot be measured)."""
        m = compare(self.reference, outputs, per_position=self.spec.metric == "top1", names=self.names,
                    focus=self.spec.output, metric=self.spec.metric)
        rel = []
        for name, got in zip(self.names, outputs):
            if name not in self._refs:
                continue
            flat = np.asarray(got, np.float64).ravel()
            if flat.shape == self._refs[name].shape and np.all(np.isfinite(flat)):
                rel.append(float(np.linalg.norm(flat - self._refs[name]) / max(self._norms[name], 1e-12)))
            else:
                rel.append(float("inf"))
        m["rel_error"] = max(rel, default=0.0)
        accs = {k: v for k, v in accuracies(outputs, self.labels, self.names).items()
                if k in self.looked_at and k in self.baseline}
        drops = {k: self.baseline[k] - v for k, v in accs.items()}
        if drops:
            at = max(drops, key=lambda k: (drops[k], -self.names.index(k)))
            m["accuracy"], m["accuracy_drop"] = accs[at], drops[at]
        else:
            m["accuracy"], m["accuracy_drop"] = None, None
        m["score"] = self.score(m)
        return m

    def score(self, m: dict) -> float | None:
        """The metric's figure of the worst output looked at."""
        if self.spec.metric == "top1":
            return m.get("top1_agreement")
        if self.spec.metric == "max_abs":
            per = m.get("outputs")
            if per is None:
                err = m.get("max_abs_error")
                return None if err is None else 1.0 - err / self.scale
            errs = [per[n]["max_abs_error"] for n in self.looked_at if n in per]
            if not errs or any(e is None for e in errs):
                return None
            return 1.0 - max(e / self.scales[n] for e, n in zip(errs, self.looked_at))
        return m.get("cosine")

    def loss(self, m: dict) -> tuple[float, float]:
        """What a search ranks candidates by, lower first: continuous where the metric is not."""
        rel = m.get("rel_error")
        rel = float("inf") if rel is None else rel
        if self.spec.metric == "top1":
            top = m.get("top1_agreement")
            return (1.0 - top if top is not None else float("inf"), rel)
        if self.spec.metric == "max_abs":
            score = self.score(m)
            return (float("inf") if score is None else 1.0 - score, rel)
        return (rel, 0.0)


def accuracy_drop(measured: dict, baseline_accuracy: float | None) -> float | None:
    """The measured accuracy drop: the Meter's (the largest over the outputs), else baseline - accuracy."""
    if measured.get("accuracy_drop") is not None:
        return measured["accuracy_drop"]
    acc = measured.get("accuracy")
    return None if acc is None or baseline_accuracy is None else baseline_accuracy - acc


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
            drop = accuracy_drop(measured, baseline_accuracy)
            ok &= drop is not None and drop <= self.max_accuracy_drop + 1e-12
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
            drop = accuracy_drop(measured, baseline_accuracy)
            parts.append("accuracy drop -" if drop is None else f"accuracy drop {100 * drop:.2f} points")
        if self.min_cosine is not None or not parts:
            score = measured.get("score", measured.get("cosine"))
            parts.append(f"{SCORE_NAMES[spec.metric]} " + ("-" if score is None else f"{score:.5f}"))
        text = ", ".join(parts)
        if spec.output is not None:
            return text + f" on output {spec.output!r}"
        at, per = measured.get("worst_output"), measured.get("outputs") or {}
        return text + (f" (worst output {at!r})" if at is not None and len(per) > 1 else "")


__all__ = ["FidelityBudget", "Meter", "where", "spec_or_default", "accuracy_drop", "SCORE_NAMES"]
