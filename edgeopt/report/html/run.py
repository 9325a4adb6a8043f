"""The report of one run (`edgeopt run --format json` / `run --report`)."""

from __future__ import annotations

from pathlib import Path

from edgeopt import __version__
from edgeopt.report.html import charts
from edgeopt.report.html.page import Col, class_legend, document, esc, figure, note, num, section, table, text_cell
from edgeopt.report.html.roofline import points, roofline_chart, roofs, worst
from edgeopt.report.html.style import CLASS_COLORS, CLASS_LABELS, OP_CLASSES, report_class
from edgeopt.report.units import count, fixed, nbytes


def device_names(doc: dict) -> list[str]:
    device = doc.get("device")
    if not device:
        return []
    return list(device) if isinstance(device, list) else [device]


def _ms(value) -> str:
    """Four significant digits: a tiny model's 0.003 ms and a large one's 850 ms both read whole."""
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in (params or {}).items())


def _stage_table(doc: dict, devices: list[str]) -> str:
    first = devices[0] if devices else None
    cols = [
        Col("#", lambda s, i: num(s["stage"], str(s["stage"]), f"stages.{i}.stage")),
        Col("pass", lambda s, i: (f'<td class="passcell"><span class="pass">{esc(s["pass"])}</span>'
                                  + (f'<span class="params">{esc(_params(s.get("params")))}</span>'
                                     if s.get("params") else "") + "</td>"), numeric=False),
        Col("MACs", lambda s, i: num(s.get("macs"), count(s.get("macs")), f"stages.{i}.macs")),
        Col("params", lambda s, i: num(s.get("params_count"), count(s.get("params_count")),
                                       f"stages.{i}.params_count")),
        Col("weights", lambda s, i: num(s.get("weight_bytes"), nbytes(s.get("weight_bytes")),
                                        f"stages.{i}.weight_bytes")),
        Col("peak act.", lambda s, i: num(s.get("peak_activation_bytes"), nbytes(s.get("peak_activation_bytes")),
                                          f"stages.{i}.peak_activation_bytes"),
            title="peak activation memory"),
    ]
    for name in devices:
        def cell(s, i, name=name):
            est = ((s.get("devices") or {}).get(name) or {})
            if "est_latency_ms" in est:
                return num(est["est_latency_ms"], _ms(est["est_latency_ms"]),
                           f"stages.{i}.devices.{name}.est_latency_ms")
            return num(s.get("est_latency_ms"), _ms(s.get("est_latency_ms")), f"stages.{i}.est_latency_ms")
        cols.append(Col(f"{name} est. ms", cell, title=f"estimated latency on {name} (roofline model)"))
    cols.append(Col(f"{first} est. mJ" if first else "est. mJ",
                    lambda s, i: num(s.get("est_energy_mj"), fixed(4)(s.get("est_energy_mj")),
                                     f"stages.{i}.est_energy_mj"),
                    title="estimated energy per inference on the first device"))
    cols.append(Col("host meas. ms", lambda s, i: num(s.get("measured_latency_ms"), fixed(4)(s.get("measured_latency_ms")),
                                                      f"stages.{i}.measured_latency_ms"),
                    title="measured with onnxruntime on the machine that ran the recipe"))

    def fid(key, digits, label, title):
        def cell(s, i):
            value = (s.get("fidelity") or {}).get(key)
            return num(value, fixed(digits)(value), f"stages.{i}.fidelity.{key}")
        return Col(label, cell, title=title)

    def vs_input(s, i):
        value = ((s.get("fidelity") or {}).get("vs_input") or {}).get("cosine")
        if i == 0:
            value = (s.get("fidelity") or {}).get("cosine")
            return num(value, fixed(6)(value), f"stages.{i}.fidelity.cosine")
        return num(value, fixed(6)(value), f"stages.{i}.fidelity.vs_input.cosine")

    cols += [fid("cosine", 6, "cosine", "output cosine against the previous stage"),
             Col("cosine vs input", vs_input, title="output cosine against the input model"),
             fid("top1_agreement", 4, "top-1 agr.", "top-1 agreement with the previous stage"),
             fid("accuracy", 4, "accuracy", "accuracy on the recipe's labelled data")]
    return table(cols, doc["stages"], id_="stage-table")


def _checks_table(doc: dict) -> str:
    def ok_cell(c, i):
        cls = "ok" if c.get("ok") else "bad"
        return (f'<td data-key="checks.{i}.ok" data-value="{"true" if c.get("ok") else "false"}">'
                f'<span class="badge {cls}">{"pass" if c.get("ok") else "FAIL"}</span></td>')

    def value_cell(key):
        def cell(c, i):
            v = c.get(key)
            text = "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
            return num(v, text, f"checks.{i}.{key}")
        return cell

    cols = [Col("check", lambda c, i: text_cell(c.get("name")), numeric=False),
            Col("limit", value_cell("limit")), Col("value", value_cell("value")), Col("result", ok_cell, numeric=False)]
    return table(cols, doc["checks"], id_="checks-table")


def _change(before, after):
    if before in (None, 0) or after is None:
        return None
    return (after - before) / before * 100


def _card(label: str, value, text: str, key: str | None, change: float | None, lower_is_better=True) -> str:
    delta = ""
    if change is not None:
        good = (change <= 0) == lower_is_better
        delta = f'<div class="d {"down" if good else "up"}">{change:+.1f} % vs input</div>'
    return (f'<div class="card"><div class="k">{esc(label)}</div>'
            f'{num(value, text, key, cls="v", tag="div")}{delta}</div>')


def _cards(doc: dict, devices: list[str]) -> str:
    stages = doc["stages"]
    first, last = stages[0], stages[-1]
    n = len(stages) - 1
    out = [_card("MACs", last.get("macs"), count(last.get("macs")), f"stages.{n}.macs",
                 _change(first.get("macs"), last.get("macs"))),
           _card("weights", last.get("weight_bytes"), nbytes(last.get("weight_bytes")), f"stages.{n}.weight_bytes",
                 _change(first.get("weight_bytes"), last.get("weight_bytes")))]
    for name in devices:
        after = ((last.get("devices") or {}).get(name) or {}).get("est_latency_ms")
        before = ((first.get("devices") or {}).get(name) or {}).get("est_latency_ms")
        out.append(_card(f"est. latency on {name}", after, f"{_ms(after)} ms",
                         f"stages.{n}.devices.{name}.est_latency_ms", _change(before, after)))
    acc = (last.get("fidelity") or {}).get("accuracy")
    if acc is not None:
        acc0 = (first.get("fidelity") or {}).get("accuracy")
        drop = None if acc0 is None else f"{(acc - acc0) * 100:+.2f} points vs input"
        out.append(f'<div class="card"><div class="k">accuracy</div>'
                   f'{num(acc, f"{acc * 100:.2f} %", f"stages.{n}.fidelity.accuracy", cls="v", tag="div")}'
                   + (f'<div class="d">{esc(drop)}</div>' if drop else "") + "</div>")
    return f'<div class="cards">{"".join(out)}</div>'


def _stage_notes(doc: dict) -> str:
    items = []
    for s in doc["stages"][1:]:
        if s.get("summary"):
            items.append(f'<li><span class="pass">{esc(s["pass"])}</span>: {esc(s["summary"])}</li>')
        for w in s.get("warnings") or []:
            items.append(f'<li><span class="badge bad">warning</span> {esc(w)}</li>')
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


# -- layers: from the document, or profiled from the output model ----------------------------------------

def resolve_layers(doc: dict, base: Path | None, devices: list[str]) -> tuple[dict | None, str]:
    """({device: rows}, how they were obtained) or (None, why not)."""
    if isinstance(doc.get("layers"), dict) and doc["layers"]:
        return doc["layers"], "document"
    output = doc.get("output")
    if not output:
        return None, "the document has no per-layer profile and names no output model"
    candidates = [Path(output)] + ([base / output] if base is not None and not Path(output).is_absolute() else [])
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None, (f"the document has no per-layer profile (`edgeopt run --report` adds one) and its "
                      f"output model {output} does not exist")
    if not devices:
        return None, "the document names no device to profile the output model on"
    try:
        from edgeopt.devices import load_device
        from edgeopt.graph.io import load_model
        from edgeopt.graph.shapes import resolve_input_shapes
        from edgeopt.profile import profile_on_devices

        model = load_model(path)
        profs = profile_on_devices(model, [load_device(d) for d in devices], resolve_input_shapes(model))
    except Exception as exc:  # the report still shows everything else
        return None, f"profiling the output model {output} failed: {' '.join(str(exc).split())[:200]}"
    return {d: p.layers for d, p in zip(devices, profs)}, f"profiled from the output model {output}"


def _worst_table(name: str, top, from_doc: bool) -> str:
    def key(p, field):
        return f"layers.{name}.{p.index}.{field}" if from_doc else None

    cols = [Col("#", lambda p, i: num(i + 1, str(i + 1))),
            Col("layer", lambda p, i: f"<td><code>{esc(p.layer.get('name'))}</code></td>", numeric=False),
            Col("op", lambda p, i: text_cell(p.layer.get("op_type")), numeric=False),
            Col("class", lambda p, i: (f'<td><span class="swatch" style="background:{CLASS_COLORS[p.op_class]}">'
                                       f"</span>{esc(CLASS_LABELS[p.op_class])}</td>"), numeric=False),
            Col("MACs", lambda p, i: num(p.layer.get("macs"), count(p.layer.get("macs")), key(p, "macs"))),
            Col("ops/byte", lambda p, i: num(p.intensity, f"{p.intensity:.1f}", key(p, "arithmetic_intensity"))),
            Col("est. ms", lambda p, i: num(p.layer["est_latency_ms"], f"{p.layer['est_latency_ms']:.5f}",
                                            key(p, "est_latency_ms"))),
            Col("bound", lambda p, i: text_cell(p.layer.get("bound")), numeric=False)]
    return table(cols, top, cls="worst", id_=f"worst-{name}")


def _roofline_section(doc: dict, devices: list[str], base: Path | None, top_n: int) -> tuple[str, dict | None]:
    lead = ("Each point is a layer of the output model: how many ops it does per byte it touches (x) against "
            "the throughput its estimated latency implies (y). The black line is the device's roof: DRAM "
            "bandwidth on the left, peak compute on the right, meeting at the ridge (dotted). Layers left of "
            "the ridge would be memory-bound if their bytes came from DRAM; points far below the roof run at "
            "a fraction of peak (the device's efficiency for that op class); points above the bandwidth slope "
            "keep their working set on chip (no DRAM traffic in the cost model). Numbered: the layers with "
            "the largest estimated latency, listed under each chart.")
    if not devices:
        return section("roofline", "Roofline per device", "", note("No device in the document: no roofline.")), None
    layers, how = resolve_layers(doc, base, devices)
    if layers is None:
        return section("roofline", "Roofline per device", "",
                       note(f"Roofline left out: {how}.", cls="note missing")), None
    from edgeopt.devices import load_device
    from edgeopt.errors import EdgeoptError

    parts, notes = [], []
    for name in devices:
        rows = layers.get(name)
        if not rows:
            notes.append(f"{name}: no per-layer rows in the document")
            continue
        try:
            device = load_device(name)
        except EdgeoptError as exc:
            notes.append(f"{name}: device profile not available here ({exc}); its roofline is left out")
            continue
        pts = points(rows)
        device_roofs = roofs(device, pts)
        if not pts or not device_roofs:
            notes.append(f"{name}: no layer with a known intensity and latency, or no peak / bandwidth figure")
            continue
        top = worst(pts, top_n)
        svg = roofline_chart(device, pts, device_roofs, top, f"chart-roofline-{name}")
        ridge = "; ".join(
            f'{esc(r.precision)}: peak {r.peak_ops_per_s / 1e9:g} GOPS / DRAM {r.bandwidth / 1e9:g} GB/s = ridge '
            + num(r.ridge, f"{r.ridge:.4g}", None, cls="ridge", tag="span", title=False,
                  data_device=name, data_precision=r.precision, data_peak=repr(r.peak_ops_per_s),
                  data_bandwidth=repr(r.bandwidth))
            + " ops/byte" for r in device_roofs)
        caption = f"{device.title}. {len(pts)} costed layers of {len(rows)}."
        parts.append(f'<div class="roof">{figure(svg, caption, f"fig-roofline-{name}")}'
                     f'<p class="ridges">{ridge}</p>'
                     f"<h3>Slowest layers on {esc(name)}</h3>{_worst_table(name, top, how == 'document')}</div>")
    source = "" if how == "document" else note(f"Per-layer figures {how} (the document has none).")
    body = (class_legend() + source + "".join(parts)
            + "".join(note(n, cls="note missing") for n in notes))
    return section("roofline", "Roofline per device", lead, body), layers


def _class_section(layers: dict, devices: list[str]) -> str:
    by_device = {}
    for name in devices:
        rows = layers.get(name) or []
        sums = {cls: 0.0 for cls in OP_CLASSES}
        for row in rows:
            sums[report_class(row)] += row.get("est_latency_ms") or 0.0
        if any(sums.values()):
            by_device[name] = sums
    if not by_device:
        return ""
    svg = charts.class_shares(by_device)
    cols = [Col("op class", lambda c, i: (f'<td><span class="swatch" style="background:{CLASS_COLORS[c]}"></span>'
                                          f"{esc(CLASS_LABELS[c])}</td>"), numeric=False)]
    for name, sums in by_device.items():
        total = sum(sums.values())
        cols.append(Col(f"{name} est. ms", lambda c, i, s=sums, n=name: num(
            s[c], f"{s[c]:.5f}", None, data_sum=f"layers.{n}", data_class=c)))
        cols.append(Col(f"{name} share", lambda c, i, s=sums, t=total: num(
            s[c] / t if t else None, f"{s[c] / t * 100:.1f} %" if t else "-", None)))
    shown = [c for c in OP_CLASSES if any(s[c] for s in by_device.values())]
    lead = ("Where the estimated time of the output model goes on each device, by op class (the sum of its "
            "layers' estimates; fused activations count in the layer they are fused into).")
    return section("op-classes", "Latency by op class", lead,
                   figure(svg, "Share of each op class in the estimated latency; total per device on the left.",
                          "fig-opclass") + table(cols, shown, id_="class-table"))


def render_run(doc: dict, base: Path | None = None, top_n: int = 5, source: str | None = None) -> str:
    devices = device_names(doc)
    model = Path(str(doc.get("model") or "model")).name
    ok = doc.get("ok", all(c.get("ok") for c in doc.get("checks") or []))
    checks = doc.get("checks") or []
    if ok:
        banner = (f"All {len(checks)} checks passed; output written to {doc.get('output')}." if checks
                  else f"Run completed (no checks in the recipe); output written to {doc.get('output')}.")
    else:
        failed = ", ".join(c.get("name", "?") for c in checks if not c.get("ok"))
        banner = f"Checks failed ({failed}): the output model was not written. This report shows why."
    meta = [("recipe", doc.get("recipe")), ("model", doc.get("model")), ("output", doc.get("output")),
            ("devices", ", ".join(devices) or "none"), ("data", doc.get("data"))]
    header = (f"<h1>edgeopt run report: {esc(model)}</h1>"
              f'<p class="sub">{len(doc["stages"]) - 1} passes, verified and profiled stage by stage on '
              f"{esc(', '.join(devices) or 'no device')}</p>"
              "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta if v is not None) + "</dl>"
              f'<div class="banner {"ok" if ok else "bad"}" id="status">{esc(banner)}</div>'
              + _cards(doc, devices))
    sections = [section("stages", "Stages",
                        "One row per stage: the input model, then the model after each pass. Estimates come "
                        "from the roofline cost model of each device; cosine and accuracy from onnxruntime runs "
                        "on the recipe's data. Hover a number for its exact value.",
                        _stage_table(doc, devices) + _stage_notes(doc))]
    if checks:
        sections.append(section("checks", "Checks", "The recipe's gates, evaluated on the last stage.",
                                _checks_table(doc)))
    sections.append(section(
        "cost", "Cost per stage",
        "What each pass changed: MACs and weight bytes (device-independent) and the estimated latency on "
        "each device. The last stage, the output, is drawn solid.",
        figure(charts.stage_bars(doc, devices), "MACs, weight bytes and estimated latency per stage.",
               "fig-stages")))
    roof_html, layers = _roofline_section(doc, devices, base, top_n)
    sections.append(roof_html)
    if layers:
        sections.append(_class_section(layers, devices))
    footer = (f"edgeopt {esc(doc.get('edgeopt_version') or '?')} run document"
              + f"; report by edgeopt {esc(__version__)}. "
              "Every figure in this page is in the JSON; estimates are analytic (device profiles), "
              "host latencies measured.")
    return document(f"edgeopt report: {model}", header, [s for s in sections if s], footer, "run")
