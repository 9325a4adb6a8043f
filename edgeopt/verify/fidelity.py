"""How closely one model's outputs follow another's: cosine, max error, top-1, accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    output None: all outputs. metric top1: agreement of the argmax along the output's last axis, so a
    per-position classifier (a CTC text recognizer's [N, T, 6625]) counts positions, not raw values.
    """

    output: str | None = None
    metric: str = "cosine"

    def select(self, model_outputs: list[str], outputs: list[np.ndarray]) -> list[np.ndarray]:
        return outputs if self.output is None else [outputs[model_outputs.index(self.output)]]


def _logits(outputs: list[np.ndarray]) -> np.ndarray | None:
    """The first output if it looks like class scores [N, C] (C > 1)."""
    first = np.asarray(outputs[0])
    if first.ndim == 2 and first.shape[1] > 1:
        return first
    return None


def accuracy(outputs: list[np.ndarray], labels: np.ndarray | None) -> float | None:
    logits = _logits(outputs)
    if logits is None or labels is None or len(labels) != len(logits):
        return None
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _positions(outputs: list[np.ndarray]) -> np.ndarray | None:
    """The first output as class scores per position, [.., C] -> [positions, C] (C > 1)."""
    first = np.asarray(outputs[0])
    if first.ndim < 2 or first.shape[-1] < 2:
        return None
    return first.reshape(-1, first.shape[-1])


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], per_position: bool = False) -> dict:
    """cosine, max_abs_error and top1_agreement of candidate against reference (top-1 over [N, C]
    class scores, or along the last axis at every position with per_position)."""
    ref, cand = _flat(reference), _flat(candidate)
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
    scores = _positions if per_position else _logits
    ref_logits, cand_logits = scores(reference), scores(candidate)
    if ref_logits is not None and cand_logits is not None:
        result["top1_agreement"] = float(np.mean(np.argmax(ref_logits, 1) == np.argmax(cand_logits, 1)))
    return result
