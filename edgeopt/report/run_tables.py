"""The tables that show a run: one row per stage, then the checks."""

from __future__ import annotations

from edgeopt.report.render import Column, Table
from edgeopt.report.units import count, fixed, nbytes, plain


def _flatten(stage: dict) -> dict:
    row = dict(stage)
    for key, value in (stage.get("fidelity") or {}).items():
        if not isinstance(value, dict):
            row[key] = value
    row["cosine_vs_input"] = ((stage.get("fidelity") or {}).get("vs_input") or {}).get("cosine")
    return row


def _per_output(doc: dict) -> list[str]:
    """For a model with several outputs: each lossy stage's cosine per output against the input model (the
    table's cosine columns show the worst output's)."""
    lines = []
    for s in doc["stages"][1:]:
        vs_input = (s.get("fidelity") or {}).get("vs_input") or {}
        per = vs_input.get("outputs") or {}
        if len(per) < 2:
            continue
        worst = vs_input.get("worst_output")
        parts = [f"{name} {fig['cosine']:.6f}" + (" (worst)" if name == worst else "")
                 for name, fig in per.items() if fig.get("cosine") is not None]
        lines.append(f"  {s['pass']}: cosine per output vs input: " + ", ".join(parts))
    return lines


def _warnings(doc: dict) -> list[str]:
    return [f"  warning: {w}" for s in doc["stages"] for w in s.get("warnings") or []]


def _device_label(device) -> str:
    if not device:
        return "none"
    return ", ".join(device) if isinstance(device, list) else device


def _change(before, after) -> str | None:
    if before in (None, 0) or after is None:
        return None
    return f"{(after - before) / before * 100:+.1f} %"


def _deltas(doc: dict) -> list[str]:
    """One line: what the whole recipe changed, input stage -> final stage, per device too."""
    first, last = doc["stages"][0], doc["stages"][-1]
    parts = []
    for key, label in (("macs", "MACs"), ("weight_bytes", "weights"), ("peak_activation_bytes", "peak act."),
                       ("measured_latency_ms", "host ms")):
        change = _change(first.get(key), last.get(key))
        if change:
            parts.append(f"{label} {change}")
    for name, est in (last.get("devices") or {}).items():
        change = _change(((first.get("devices") or {}).get(name) or {}).get("est_latency_ms"), est.get("est_latency_ms"))
        if change:
            parts.append(f"{name} est. ms {change}")
    return ["  input -> output: " + ", ".join(parts)] if parts and len(doc["stages"]) > 1 else []


def _bands(doc: dict) -> list[str]:
    """How far each device's estimate was validated against published measurements."""
    from edgeopt.devices.validation import band_text

    return [f"  {name} estimate: {band_text(b)}" for name, b in (doc.get("device_bands") or {}).items()]


def _extra_device_columns(doc: dict) -> list[Column]:
    names = list((doc["stages"][0].get("devices") or {}))[1:]
    return [Column(f"est_latency_ms@{name}", f"{name} est ms", fixed(3), priority=4) for name in names]


def run_tables(doc: dict) -> list[Table]:
    extra = _extra_device_columns(doc)
    rows = []
    for stage in doc["stages"]:
        row = _flatten(stage)
        for name, est in (stage.get("devices") or {}).items():
            row[f"est_latency_ms@{name}"] = est.get("est_latency_ms")
        rows.append(row)
    first_device = _device_label(doc.get("device")).split(", ")[0]
    stages = Table(
        title=f"{doc['model']} -> {doc['output']}  (device: {_device_label(doc.get('device'))}, data: {doc.get('data')})",
        columns=[
            # priority: what goes first on a narrow terminal (0 stays): at 100 columns the figures that
            # decide a recipe (MACs, weights, the first device's estimate, host time, fidelity) stay whole
            Column("stage", "#"),
            Column("pass", "pass", justify="left"),
            Column("macs", "MACs", count),
            Column("params_count", "params", count, priority=5),
            Column("weight_bytes", "weights", nbytes),
            Column("peak_activation_bytes", "peak act.", nbytes, priority=3),
            Column("est_latency_ms", f"{first_device} est ms" if first_device != "none" else "est ms", fixed(3),
                   priority=1),
            Column("est_energy_mj", f"{first_device} est mJ" if first_device != "none" else "est mJ", fixed(3),
                   priority=4),
            *extra,
            Column("measured_latency_ms", "host meas ms", fixed(3), priority=2),
            Column("cosine", "cosine", fixed(6), priority=1),
            Column("max_abs_error", "max err", lambda v: "-" if v is None else f"{v:.2e}", priority=5),
            Column("top1_agreement", "top-1 agr.", fixed(4), priority=5),
            Column("accuracy", "accuracy", fixed(4), priority=1),
        ],
        rows=rows,
        footer=[f"  {s['pass']}: {s['summary']}" for s in doc["stages"][1:] if s.get("summary")] + _deltas(doc)
        + _bands(doc)
        + _per_output(doc) + _warnings(doc),
    )
    tables = [stages]
    if doc.get("checks"):
        tables.append(Table(
            title="checks",
            columns=[Column("name", "check", justify="left"), Column("limit", "limit", plain),
                     Column("value", "value", plain),
                     *([Column("output", "output", plain, justify="left")]
                       if any(c.get("output") for c in doc["checks"]) else []),
                     Column("ok", "ok", plain)],
            rows=doc["checks"],
        ))
    return tables
