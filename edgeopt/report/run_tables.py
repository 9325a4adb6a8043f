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


def run_tables(doc: dict) -> list[Table]:
    stages = Table(
        title=f"{doc['model']} -> {doc['output']}  (device: {doc.get('device') or 'none'}, data: {doc.get('data')})",
        columns=[
            Column("stage", "#"),
            Column("pass", "pass", justify="left"),
            Column("macs", "MACs", count),
            Column("params_count", "params", count),
            Column("weight_bytes", "weights", nbytes),
            Column("peak_activation_bytes", "peak act.", nbytes),
            Column("est_latency_ms", "est. ms", fixed(3)),
            Column("est_energy_mj", "est. mJ", fixed(3)),
            Column("measured_latency_ms", "host ms", fixed(3)),
            Column("cosine", "cosine", fixed(6)),
            Column("max_abs_error", "max err", lambda v: "-" if v is None else f"{v:.2e}"),
            Column("top1_agreement", "top-1 agr.", fixed(4)),
            Column("accuracy", "accuracy", fixed(4)),
        ],
        rows=[_flatten(s) for s in doc["stages"]],
        footer=[f"  {s['pass']}: {s['summary']}" for s in doc["stages"][1:] if s.get("summary")],
    )
    tables = [stages]
    if doc.get("checks"):
        tables.append(Table(
            title="checks",
            columns=[Column("name", "check", justify="left"), Column("limit", "limit", plain),
                     Column("value", "value", plain), Column("ok", "ok", plain)],
            rows=doc["checks"],
        ))
    return tables
