"""`edgeopt profile MODEL --device NAME`: analytic profile on a device, and measured latency here."""

from __future__ import annotations

from pathlib import Path

import click

from edgeopt.cli.options import Progress, device_option, format_option, input_shape_option, quiet_option
from edgeopt.devices import calibration_warning, load_device
from edgeopt.graph.io import load_model
from edgeopt.graph.shapes import resolve_input_shapes
from edgeopt.profile import make_session, measure_latency, profile_on_devices, random_feeds
from edgeopt.report import Column, Table, emit
from edgeopt.report.units import count, fixed, nbytes
from edgeopt.verify.inputs import load_data
from edgeopt.verify.runtime import static_batch


MEASURE_SECONDS = 0.5  # timing budget: a ResNet-50 gets ~5 runs, a tiny model hundreds


class _Fig:
    """A value shown formatted in tables and raw in CSV."""

    def __init__(self, raw, text: str):
        self.raw, self.text = raw, text

    def __str__(self) -> str:
        return "" if self.raw is None else str(self.raw)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _yes(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def totals_table(doc: dict, with_key: bool = False) -> Table:
    t = doc["totals"]
    rows = [
        ("MACs", "macs", count(t["macs"])),
        ("ops", "ops", count(t["ops"])),
        ("params", "params_count", count(t["params_count"])),
        ("weight bytes", "weight_bytes", nbytes(t["weight_bytes"])),
        ("weight bytes by type", "weight_bytes_by_dtype",
         ", ".join(f"{k} {nbytes(v)}" for k, v in t["weight_bytes_by_dtype"].items()) or "-"),
        ("weight bytes, sparse-encoded", "weight_bytes_sparse", nbytes(t["weight_bytes_sparse"])),
        ("ops per weight byte", "ops_per_weight_byte", fixed(1)(t["ops_per_weight_byte"])),
        ("peak activation", "peak_activation_bytes", nbytes(t["peak_activation_bytes"])),
        ("peak at layer", "peak_activation_at", t["peak_activation_at"] or "-"),
        ("coverage", "coverage", f"{t['coverage_text']}" + (
            f" (not counted: {', '.join(f'{k} x{v}' for k, v in t['uncounted_ops'].items())})"
            if t["uncounted_ops"] else "")),
    ]
    if t.get("estimated_ops"):  # costed conservatively so the estimates below stay numbers
        rows.append(("estimated, not counted", "estimated_ops",
                     ", ".join(f"{k} x{v}" for k, v in t["estimated_ops"].items())
                     + f" ({count(t['estimated_macs'])} MACs)"))
    if t.get("peak_activation_unknown_tensors"):
        rows.append(("peak activation, known sizes only", "peak_activation_lower_bound",
                     f"{nbytes(t['peak_activation_lower_bound'])} ({t['peak_activation_unknown_tensors']} tensors "
                     "of unknown size counted as the largest known)"))
    if t.get("subgraph_choices"):
        rows.append(("subgraph layers counted", "subgraph_layers",
                     f"{t['subgraph_layers']}; " + "; ".join(t["subgraph_choices"])))
    if doc["device"]:
        rows += [
            ("est. latency", "est_latency_ms", _ms(t["est_latency_ms"])),
            ("est. energy", "est_energy_mj", "-" if t["est_energy_mj"] is None else f"{t['est_energy_mj']:.3f} mJ"),
            ("layers compute / memory-bound / fused", "bound_counts",
             f"{t['compute_bound_layers']} / {t['memory_bound_layers']} / {t['fused_layers']}"),
            ("compute precision (main layers)", "compute_precision", t.get("compute_precision") or "-"),
            ("ridge point (ops per DRAM byte)", "ridge_ops_per_byte", fixed(1)(t.get("ridge_ops_per_byte"))),
            ("on-chip memory", "onchip_bytes", nbytes(t["onchip_bytes"])),
            ("weights fit on chip", "weights_fit_onchip", _yes(t["weights_fit_onchip"])),
            ("peak activation fits on chip", "peak_activation_fits_onchip", _yes(t["peak_activation_fits_onchip"])),
            ("layers spilling to DRAM", "spilling_layers", str(t["spilling_layers"])),
        ]
        if t.get("assumptions"):
            rows.append(("assumed device figures", "assumptions", ", ".join(t["assumptions"])))
        if t.get("est_latency_band") is not None:
            from edgeopt.devices.validation import band_text

            rows.append(("estimate validated", "est_latency_band", band_text(t["est_latency_band"])))
    rows.append(("measured latency (this host, onnxruntime)", "measured_latency_ms", _ms(t["measured_latency_ms"])))
    if t.get("predicted_to_measured") is not None:
        rows.append(("predicted / measured", "predicted_to_measured", f"{t['predicted_to_measured']:.2f}"))
    raw = {key: t.get(key) for _, key, _ in rows}
    raw["bound_counts"] = (f"{t.get('compute_bound_layers')}/{t.get('memory_bound_layers')}/{t.get('fused_layers')}"
                           if doc["device"] else None)
    table_rows = [{"figure": label, "key": key, "value": _Fig(raw[key], text)} for label, key, text in rows]
    title = f"{doc['model']} on {doc['device'] or 'no device'}"
    columns = [Column("figure", "figure", justify="left"),
               Column("value", "value", fmt=lambda v: v.text if isinstance(v, _Fig) else str(v), justify="left")]
    if with_key:  # csv: the JSON key next to the label, for scripts
        columns.insert(1, Column("key", "key", justify="left"))
    return Table(title=title, rows=table_rows, columns=columns)


def layers_table(prof, top: int | None) -> Table:
    ranked = prof.top_layers()
    shown = ranked[:top] if top else ranked
    footer = [f"{len(ranked) - len(shown)} more layers not shown (--top 0 shows all)"] if len(shown) < len(ranked) else []
    columns = [
        Column("name", "layer", justify="left"),
        Column("op_type", "op", justify="left"),
        Column("macs", "MACs", count),
        Column("params_count", "params", count),
        Column("weight_bytes", "weights", nbytes),
        Column("output_bytes", "output", nbytes),
        Column("arithmetic_intensity", "ops/B", fixed(1)),
    ]
    if prof.device:
        columns += [
            Column("compute_precision", "prec", justify="left"),
            Column("fits_onchip", "on-chip"),
            Column("est_latency_ms", "est ms", fixed(4)),
            Column("bound", "bound", justify="left"),
            Column("roofline_region", "roofline", justify="left"),
        ]
    return Table(title="layers, most expensive first", columns=columns, rows=shown, footer=footer)


@click.command("profile")
@click.argument("model_path", metavar="MODEL")
@device_option()
@click.option("--per-layer", is_flag=True, help="Also print the layer table, most expensive first.")
@click.option("--top", type=click.IntRange(min=0), default=25, show_default=True,
              help="Layers shown in the table format (0: all; csv / markdown / json show all).")
@click.option("--no-measure", is_flag=True, help="Skip the measured onnxruntime latency on this machine.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help="An .npz of real inputs by input name (as a recipe's data:): its shapes fix free dims, "
                   "its first sample is what latency is measured on and decides input-dependent If branches.")
@input_shape_option
@format_option
@quiet_option
def command(model_path, device, per_layer, top, no_measure, data, input_shapes, fmt, quiet):
    """Analytic profile of MODEL on a device (default: host), next to the latency measured here.

    Counts MACs, params, weight bytes by stored type, activation memory
    (liveness peak) and a roofline latency / energy estimate per layer from
    the device profile (see `edgeopt devices`).
    """
    progress = Progress(quiet)
    dev = load_device(device or "host")
    warning = calibration_warning(dev)
    if warning:
        progress.warn(warning)
    model = load_model(model_path)
    real = load_data(data, model).first(static_batch(model) or 1) if data else None
    shapes = resolve_input_shapes(model, input_shapes, real)
    # Real inputs also serve shape inference's onnxruntime step and pick input-dependent branches;
    # without them it runs on seeded random inputs of its own.
    prof = profile_on_devices(model, [dev], shapes, real)[0]
    session = None if no_measure else make_session(model)
    feeds = real if real is not None else (None if session is None else random_feeds(session, shapes))
    totals = prof.totals
    if totals["uncounted_ops"]:
        progress.warn(f"coverage {totals['coverage_text']}: not counted: "
                      + ", ".join(f"{k} x{v}" for k, v in totals["uncounted_ops"].items()))
    if session is not None:
        progress.info("measuring latency with onnxruntime ...")
        totals["measured_latency_ms"] = measure_latency(session, feeds, max_seconds=MEASURE_SECONDS)
        if dev.name == "host" and totals["est_latency_ms"]:
            totals["predicted_to_measured"] = totals["est_latency_ms"] / totals["measured_latency_ms"]
    doc = prof.to_dict(model=model_path)
    tables = [totals_table(doc, with_key=fmt == "csv")]
    if per_layer:
        tables.append(layers_table(prof, None if fmt != "table" else top))
    emit(doc, tables, fmt)


__all__ = ["command"]
