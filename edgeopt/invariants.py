"""What the pipeline holds every stage to beyond the checker and the outputs.

- A lossless stage keeps the MAC count: it may fold constants (which the
  profiler never counts as compute) but not change what is computed. A stage
  whose MAC layers are not all counted exactly cannot be compared: that is a
  warning, not a failure, so a gap in the profile never fails a valid model.
- A lossy stage whose output drifts far from the input model's (cosine below
  WRECK_COSINE on its worst output, each output on its own) is never silent: it
  gets a warning that names the pass, the output, the figure and what to try.
- A lossy stage verified without `data:` says that its figures come from random
  inputs and say nothing about accuracy.
"""

from __future__ import annotations

from edgeopt.verify.fidelity import worst

WRECK_COSINE = 0.9
MACS_RTOL = 1e-6


def lossless_macs_problem(label: str, before: dict, after: dict, folded_macs: int = 0) -> tuple[str | None, str | None]:
    """(error, warning) for a lossless stage's MAC count against the previous stage's."""
    a, b = before.get("macs"), after.get("macs")
    if a is None or b is None:
        return None, None
    if abs(a - b) <= max(MACS_RTOL * max(a, b), folded_macs):
        return None, None
    change = f"{a:,} -> {b:,} MACs ({(b - a) / max(a, 1):+.1%})"
    if not (before.get("macs_exact") and after.get("macs_exact")):
        return None, (f"{label} is lossless but its stage profiles to {change}; some MAC layers have no "
                      "static shapes, so the counts are not comparable")
    folded = f", beyond the {folded_macs:,} it reports folding" if folded_macs else ""
    return f"{label} is lossless but changed the MAC count: {change}{folded}", None


def wreck_warning(label: str, fidelity: dict, advice: str = "", metric: str = "cosine") -> str | None:
    """A warning when a lossy stage's worst output cosine (or, with the recipe's `fidelity: {metric: top1}`,
    top-1 agreement) against the input model is below WRECK_COSINE; it names that output when the model has
    several."""
    key, check = ("top1_agreement", "min_top1_agreement") if metric == "top1" else ("cosine", "min_cosine")
    vs_input = fidelity.get("vs_input") or {}
    value = vs_input.get(key)
    if value is None or value >= WRECK_COSINE:
        return None
    hint = advice or "milder settings for this pass, or calibration data (calibration_data:)"
    what = "top-1 agreement" if key == "top1_agreement" else "cosine"
    per = vs_input.get("outputs") or {}
    at = worst(per, key, (fidelity.get("on") or {}).get("output")) if len(per) > 1 else None
    output = f"output {at!r} {what}" if at is not None else f"output {what}"
    of = f" (the worst of {len(per)} outputs)" if at is not None and not (fidelity.get("on") or {}).get("output") else ""
    return (f"{label}: {output} {value:.4f} against the input model{of} (below {WRECK_COSINE}): the model may "
            f"be wrecked; try {hint}, and add a {check} check to the recipe so a build fails on it")


def random_input_warning(label: str, samples: int, distributions: dict | None = None) -> str:
    """What a lossy stage's figures mean without `data:`: the outputs' drift on made-up inputs, not accuracy."""
    drawn = ", ".join(f"{name} {d.describe()}" for name, d in (distributions or {}).items()) or "standard normal"
    rather = "" if distributions else ", or at least `random_inputs:` that match your preprocessing"
    return (f"{label}: fidelity measured on {samples} samples of seeded random inputs ({drawn}), not on real "
            "data: it says nothing about accuracy (a pass can keep random inputs' outputs and still break real "
            "ones); give the recipe `data:` (an .npz with one array per model input, plus `labels` for "
            f"accuracy){rather}")
