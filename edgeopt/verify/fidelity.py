"""How closely one model's outputs follow another's: cosine, max error, top-1, accuracy, per graph output.

Every figure is computed on each graph output alone (a small-norm score map next to a large-norm box
map: one cosine over both concatenated is the box map's). A comparison reports:

    outputs        {NAME: {cosine, max_abs_error, top1_agreement[, accuracy]}}, every output
    worst_output   the output that is worst by the metric (FidelitySpec.metric): lowest cosine; lowest
                   top-1 agreement (where an output has one); largest max abs error / its own scale
    cosine, max_abs_error, top1_agreement[, accuracy]
                   each the worst over the outputs looked at (the named `fidelity: {output}` only, else
                   every output): lowest cosine, top-1 and accuracy, largest max abs error. These keep
                   their old keys; with one output they are that output's figures.

Checks, budgets, warnings and tune objectives read these (edgeopt/checks.py, verify/budget.py,
invariants.py, tune/objectives.py), so they all hold on every output, or on the named one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIGURES = ("cosine", "max_abs_error", "top1_agreement")
LOWER_IS_WORSE = {"cosine": True, "top1_agreement": True, "accuracy": True, "max_abs_error": False}


def _flat(outputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])


def output_scale(outputs: list[np.ndarray]) -> float:
    """The magnitude that tolerances are relative to: max |value| of the reference, at least 1."""
    flat = _flat(outputs)
    finite = flat[np.isfinite(flat)]
    return max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0


METRICS = ("cosine", "top1", "max_abs")


@dataclass(frozen=True)
class FidelitySpec:
    """The recipe's `fidelity:`: which output budgets and checks look at, and how.

    output None: every output, each on its own, the worst one counting. metric top1: agreement of the
    argmax along the output's last axis, so a per-position classifier (a CTC text recognizer's
    [N, T, 6625]) counts positions, not raw values.
    """

    output: str | None = None
    metric: str = "cosine"

    def select(self, model_outputs: list[str], outputs: list[np.ndarray]) -> list[np.ndarray]:
        return outputs if self.output is None else [outputs[model_outputs.index(self.output)]]


def output_names(outputs: list, names: list[str] | None) -> list[str]:
    """The outputs' names; positions ("0", "1", ...) when the caller has none."""
    return list(names) if names is not None else [str(i) for i in range(len(outputs))]


def _class_scores(output: np.ndarray) -> np.ndarray | None:
    """The output if it looks like class scores [N, C] (C > 1)."""
    output = np.asarray(output)
    return output if output.ndim == 2 and output.shape[1] > 1 else None


def _positions(output: np.ndarray) -> np.ndarray | None:
    """The output as class scores per position, [.., C] -> [positions, C] (C > 1)."""
    output = np.asarray(output)
    if output.ndim < 2 or output.shape[-1] < 2:
        return None
    return output.reshape(-1, output.shape[-1])


def output_accuracy(output: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of one output against labels, where it applies: class scores [N, C], N labels."""
    scores = _class_scores(output)
    if scores is None or labels is None or len(labels) != len(scores):
        return None
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def accuracies(outputs: list[np.ndarray], labels: np.ndarray | None, names: list[str] | None = None) -> dict:
    """{name: accuracy} of every output where accuracy applies (none without labels)."""
    if labels is None:
        return {}
    out = {}
    for name, value in zip(output_names(outputs, names), outputs):
        acc = output_accuracy(value, labels)
        if acc is not None:
            out[name] = acc
    return out


def accuracy(outputs: list[np.ndarray], labels: np.ndarray | None, names: list[str] | None = None,
             focus: str | None = None) -> float | None:
    """The lowest accuracy over the outputs where it applies (the `focus` output only, when named)."""
    accs = accuracies(outputs, labels, names)
    if focus is not None:
        accs = {k: v for k, v in accs.items() if k == focus}
    return min(accs.values()) if accs else None


def compare_one(reference: np.ndarray, candidate: np.ndarray, per_position: bool = False) -> dict:
    """cosine, max_abs_error and top1_agreement of one output against its reference (top-1 over [N, C]
    class scores, or along the last axis at every position with per_position); `problem` when the two
    cannot be compared."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if ref.shape != cand.shape:
        return {"cosine": None, "max_abs_error": None, "top1_agreement": None,
                "problem": f"output sizes differ ({ref.size} vs {cand.size} values)"}
    if not np.all(np.isfinite(cand)) and np.all(np.isfinite(ref)):
        return {"cosine": None, "max_abs_error": None, "top1_agreement": None,
                "problem": "the outputs contain NaN or Inf where the reference is finite"}
    denom = np.linalg.norm(ref) * np.linalg.norm(cand)
    cosine = float(np.dot(ref, cand) / denom) if denom > 0 else (1.0 if np.array_equal(ref, cand) else 0.0)
    result = {"cosine": cosine, "max_abs_error": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
              "top1_agreement": None}
    scores = _positions if per_position else _class_scores
    ref_scores, cand_scores = scores(reference), scores(candidate)
    if ref_scores is not None and cand_scores is not None:
        result["top1_agreement"] = float(np.mean(np.argmax(ref_scores, 1) == np.argmax(cand_scores, 1)))
    return result


def worst(per_output: dict[str, dict], key: str, focus: str | None = None) -> str | None:
    """The output whose `key` figure is worst (lowest cosine / top-1 / accuracy, largest max abs error)
    among those that have one; only `focus` when named. Ties: the first output."""
    names = [n for n, fig in per_output.items() if (focus is None or n == focus) and fig.get(key) is not None]
    if not names:
        return None
    sign = 1.0 if LOWER_IS_WORSE[key] else -1.0
    return min(names, key=lambda n: sign * per_output[n][key])


def worst_by_metric(per_output: dict[str, dict], metric: str, scales: dict[str, float],
                    focus: str | None = None) -> str | None:
    """The output worst by the metric: lowest cosine; lowest top-1 agreement (lowest cosine where no
    output has one); largest max abs error relative to that output's own scale."""
    if metric == "top1":
        return worst(per_output, "top1_agreement", focus) or worst(per_output, "cosine", focus)
    if metric == "max_abs":
        relative = {n: {"cosine": None if f.get("max_abs_error") is None else -f["max_abs_error"] / scales[n]}
                    for n, f in per_output.items()}
        return worst(relative, "cosine", focus)
    return worst(per_output, "cosine", focus)


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], per_position: bool = False,
            names: list[str] | None = None, focus: str | None = None, metric: str = "cosine",
            labels: np.ndarray | None = None) -> dict:
    """Every output of candidate against reference on its own (see the module docstring): `outputs`,
    `worst_output`, and the worst figures over the outputs looked at (`focus`: that output only);
    with labels, each output's accuracy where it applies and the lowest as `accuracy`. `problem` (and
    None figures) when some output cannot be compared."""
    names = output_names(reference, names)
    if len(reference) != len(candidate):
        return {"cosine": None, "max_abs_error": None, "top1_agreement": None,
                "problem": f"{len(candidate)} outputs against {len(reference)}"}
    per_output = {n: compare_one(r, c, per_position) for n, r, c in zip(names, reference, candidate)}
    problems = [f"{n}: {fig.pop('problem')}" if len(names) > 1 else fig.pop("problem")
                for n, fig in per_output.items() if "problem" in fig]
    if labels is not None:
        for n, c in zip(names, candidate):
            per_output[n]["accuracy"] = output_accuracy(c, labels)
    scales = {n: output_scale([r]) for n, r in zip(names, reference)}
    result: dict = {}
    for key in FIGURES + (("accuracy",) if labels is not None else ()):
        at = worst(per_output, key, focus)
        result[key] = per_output[at][key] if at is not None else None
    result["outputs"] = per_output
    result["worst_output"] = worst_by_metric(per_output, metric, scales, focus)
    if problems:
        result.update(cosine=None, max_abs_error=None, top1_agreement=None, problem="; ".join(problems))
    return result


class Cosines:
    """Each output's cosine against one fixed reference, with the references flattened once (the inner
    loop of a sensitivity scan: thousands of comparisons against the same float outputs)."""

    def __init__(self, reference: list[np.ndarray]):
        self.refs = [np.asarray(o, np.float64).ravel() for o in reference]
        self.norms = [float(np.linalg.norm(r)) for r in self.refs]

    def __call__(self, outputs: list[np.ndarray]) -> list[float]:
        """One cosine per output (0 for an output that is not finite or has another size)."""
        out = []
        for ref, norm, o in zip(self.refs, self.norms, outputs):
            o = np.asarray(o, np.float64).ravel()
            if o.shape != ref.shape or not np.all(np.isfinite(o)):
                out.append(0.0)
                continue
            denom = norm * float(np.linalg.norm(o))
            out.append(float(np.dot(ref, o) / denom) if denom > 0 else float(np.array_equal(ref, o)))
        return out if len(outputs) == len(self.refs) else [0.0]

    def worst(self, outputs: list[np.ndarray]) -> float:
        """The lowest cosine over the outputs."""
        return min(self(outputs), default=1.0)
