"""`edgeopt devices [NAME]`: the device profiles, or one with its figures and their sources."""

from __future__ import annotations

import click

from edgeopt.cli.options import format_option
from edgeopt.devices import Device, device_names, load_device
from edgeopt.devices.loader import aliases
from edgeopt.report import Column, Table, emit
from edgeopt.report.units import nbytes


def _value(fig) -> str:
    return fig.describe() if fig is not None else "-"


def device_doc(device: Device) -> dict:
    from edgeopt.devices.validation import band

    return {
        "name": device.name,
        **({"variant": device.variant} if device.variant else {}),
        "device": device.device_key,
        "runtime": device.runtime,
        "precision": list(device.precisions),
        "threads": device.threads,
        "validation": device.validation or {"rows": 0, "note": "no measurement behind this profile: unvalidated"},
        "est_latency_band": band(device),
        "fit": {k: v for k, v in device.fit.items() if k != "rows"} if device.fit else None,
        "aliases": [a for a, target in aliases().items() if target == device.name],
        "title": device.title,
        "path": device.path,
        "kind": device.kind,
        "precisions": list(device.precisions),
        "default_precision": device.default_precision,
        "channel_alignment": device.channel_alignment,
        "alignment": device.alignment,
        "fuses": list(device.fuses),
        "weight_decode": {"mode": device.weight_decode.mode, "runtime_ops": list(device.weight_decode.runtime_ops),
                          "slowdown": device.weight_decode.slowdown, "layer_us": device.weight_decode.layer_us,
                          "mark": device.weight_decode.mark, "source": device.weight_decode.source},
        "calibrated": device.calibrated,
        "notes": device.notes,
        "figures": {key: {"value": fig.value, "assume": fig.assume, "mark": fig.mark, "source": fig.source,
                          "note": fig.note} for key, fig in device.figures()},
    }


def _peak_text(device: Device) -> str:
    parts = []
    for p in device.precisions:
        fig = device.peak_gops.get(p)
        if fig is not None and fig.effective is not None:
            parts.append(f"{p} {fig.effective:g}")
    return ", ".join(parts)


def _decode_text(device: Device) -> str:
    wd = device.weight_decode
    if wd.mode != "runtime":
        return wd.mode
    slow = ", ".join(f"{k} x{v:g}" for k, v in wd.slowdown.items())
    return f"runtime ({', '.join(wd.runtime_ops)}: {slow}, +{wd.layer_us:g} us/layer)"


def _band_text(device: Device) -> str:
    from edgeopt.devices.validation import band

    b = band(device)
    if not b["validated"]:
        return "unvalidated"
    return f"{b['within_25']:.0%} within ±25 %, median {b['median_error']:.0%} ({b['basis']})"


def _validation_text(device: Device) -> str:
    v = device.validation or {}
    if not v.get("rows"):
        return "no published measurement behind this profile: estimates are unvalidated"
    parts = [f"{v['rows']} published rows on {len(v.get('archs', []))} architectures"]
    for key, label in (("in_sample", "in sample"), ("loao", "leave-one-architecture-out")):
        s = v.get(key) or {}
        if s.get("rows"):
            text = (f"{label}: {s['within_25']:.0%} within ±25 %, median error {s['median_error']:.0%}, "
                    f"worst {s['worst_error']:.0%}")
            if s.get("kendall_tau") is not None:
                text += f", Kendall tau {s['kendall_tau']:.2f}"
            parts.append(text)
    return "; ".join(parts)


def _clip(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


@click.command("devices")
@click.argument("name", required=False)
@format_option
def command(name, fmt):
    """List the device profiles, or show one (NAME or a YAML path) with every figure and its source."""
    if name is None:
        devices = [load_device(n) for n in device_names()]
        rows = [{
            "name": d.name, "device": d.device_key, "runtime": d.runtime, "precisions": ", ".join(d.precisions),
            "threads": d.threads, "peak_gops": _peak_text(d), "rows": (d.validation or {}).get("rows", 0),
            "loao": _band_text(d),
        } for d in devices]
        table = Table(title="device profiles (edgeopt devices NAME for figures and sources)", rows=rows, columns=[
            Column("name", "name", justify="left"),
            Column("device", "device", justify="left"),
            Column("runtime", "runtime", justify="left"),
            Column("precisions", "precision", justify="left"),
            Column("threads", "threads"),
            Column("peak_gops", "peak GOPS", justify="left"),
            Column("rows", "published rows"),
            Column("loao", "validated (leave-one-arch-out)", justify="left"),
        ], footer=["old names pick a device's default variant: " + ", ".join(
            f"{a} -> {t}" for a, t in sorted(aliases().items()))])
        emit({"devices": [device_doc(d) for d in devices]}, [table], fmt)
        return
    device = load_device(name)
    limit = 110 if fmt == "table" else None
    rows = [{"figure": key, "value": _value(fig), "mark": fig.mark or "",
             "source": _clip(fig.source or fig.note or ("no source given" if fig.value is not None else ""), limit)}
            for key, fig in device.figures()]
    rows += [
        {"figure": "precisions", "value": ", ".join(device.precisions), "mark": "", "source": ""},
        {"figure": "channel_alignment", "value": str(device.channel_alignment), "mark": "",
         "source": ", ".join(f"{k} x{v}" for k, v in device.alignment.items())},
        {"figure": "fuses", "value": ", ".join(device.fuses) or "-", "mark": "", "source": ""},
        {"figure": "weight_decode", "value": _decode_text(device), "mark": device.weight_decode.mark or "",
         "source": _clip(device.weight_decode.source or "low-bit weights compute in their own precision", limit)},
    ]
    footer = [device.notes] if device.notes else []
    footer.append(f"models {device.device_key or '?'} / {device.runtime or 'runtime not named'} / "
                  f"{', '.join(device.precisions)} / threads {device.threads if device.threads else '-'}")
    footer.append("validation: " + _validation_text(device))
    if device.name == "host":
        footer.append("calibrated on this machine" if device.calibrated
                      else "not calibrated: run `edgeopt calibrate host`")
    table = Table(title=f"{device.name}: {device.title}", rows=rows, footer=footer, columns=[
        Column("figure", "figure", justify="left"),
        Column("value", "value", justify="left"),
        Column("mark", "P/M/I/C", justify="left"),
        Column("source", "source / note", justify="left"),
    ])
    emit(device_doc(device), [table], fmt)
