"""The report of one tune study (`edgeopt tune --format json`): the Pareto view and the trials."""

from __future__ import annotations

from pathlib import Path

from edgeopt import __version__
from edgeopt.report.html.charts import chart_style, new_figure, safe, to_svg
from edgeopt.report.html.page import Col, document, esc, figure, note, num, section, table, text_cell
from edgeopt.report.html.style import ACCENT, INK, MUTED
from edgeopt.report.units import plain

_STATE_BADGE = {"complete": "ok", "infeasible": "bad", "failed": "muted"}


def _fmt(value) -> str:
    return plain(value, digits=5)


def _arrow(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def pareto_chart(doc: dict, chart_id: str = "chart-pareto") -> str | None:
    """Trials in the plane of the first two objectives: feasible ones as dots, infeasible ones as
    crosses, the Pareto front joined and numbered, the baseline a star, chosen trials ringed."""
    objectives = doc["objectives"]
    if len(objectives) < 2:
        return None
    (xo, yo) = objectives[0], objectives[1]
    xn, yn = xo["name"], yo["name"]

    def xy(values):
        if not values or values.get(xn) is None or values.get(yn) is None:
            return None
        return values[xn], values[yn]

    pareto = set(doc.get("pareto") or [])
    by_number = {t["number"]: t for t in doc["trials"]}
    ok = [xy(t.get("values")) for t in doc["trials"] if t.get("state") == "complete" and t["number"] not in pareto]
    bad = [xy(t.get("values")) for t in doc["trials"] if t.get("state") == "infeasible"]
    front = sorted((xy(by_number[n].get("values")), n) for n in pareto if n in by_number
                   and xy(by_number[n].get("values")))
    ok, bad = [p for p in ok if p], [p for p in bad if p]
    with chart_style(chart_id):
        fig = new_figure(7.4, 4.4)
        ax = fig.subplots()
        if ok:
            ax.scatter(*zip(*ok), s=26, color="#9aa3ae", alpha=0.85, zorder=3, label="trial (feasible)",
                       gid="trials-feasible")
        if bad:
            ax.scatter(*zip(*bad), s=30, marker="x", color=ACCENT, linewidth=1.2, zorder=3,
                       label="trial (failed a check)", gid="trials-infeasible")
        if front:
            fx, fy = zip(*[p for p, _ in front])
            ax.plot(fx, fy, color="#3b6fb6", linewidth=1.4, drawstyle="steps-post" if len(front) > 1 else "default",
                    zorder=4, alpha=0.7)
            ax.scatter(fx, fy, s=48, color="#3b6fb6", edgecolor="white", linewidth=0.8, zorder=5,
                       label="Pareto front", gid="pareto-front")
            for k, ((x, y), n) in enumerate(front):
                ax.annotate(f"#{n}", (x, y), xytext=(6, 5 if k % 2 == 0 else -12), textcoords="offset points",
                            fontsize=8, color=INK, zorder=6)
        baseline = doc.get("baseline") or {}
        base = xy(baseline.get("values"))
        if base:
            failed = baseline.get("state") == "infeasible" or bool(baseline.get("error"))
            ax.scatter([base[0]], [base[1]], s=110, marker="*", color=ACCENT if failed else INK, zorder=6,
                       label="baseline (recipe as written" + (", failed a check)" if failed else ")"), gid="baseline")
        chosen = {}
        for objective, number in (doc.get("chosen") or {}).items():
            point = xy((by_number.get(number) or {}).get("values"))
            if point:
                chosen.setdefault(point, []).append(objective)
        for (x, y), names in chosen.items():
            ax.scatter([x], [y], s=150, facecolor="none", edgecolor=ACCENT, linewidth=1.4, zorder=6)
        if chosen:
            ax.scatter([], [], s=150, facecolor="none", edgecolor=ACCENT, linewidth=1.4, label="chosen")
        ax.set_xlabel(safe(f"{xn} ({_arrow(xo.get('direction', 'minimize'))})"))
        ax.set_ylabel(safe(f"{yn} ({_arrow(yo.get('direction', 'minimize'))})"))
        ax.margins(0.12)
        ax.legend(loc="best", fontsize=8)
        ax.set_title("trials in objective space")
        ax.tick_params(colors=MUTED)
    return to_svg(fig, chart_id, f"Pareto front of {xn} against {yn}")


def _values_cols(objectives: list[dict], root: str) -> list[Col]:
    cols = []
    for o in objectives:
        name = o["name"]
        cols.append(Col(name, lambda t, i, name=name: num(
            (t.get("values") or {}).get(name), _fmt((t.get("values") or {}).get(name)),
            f"{root}.{i}.values.{name}" if t.get("values") is not None else None),
            title=f"{name}: {_arrow(o.get('direction', 'minimize'))}"))
    return cols


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in (params or {}).items())


def _trials_table(doc: dict, rows: list[tuple[int, dict]], id_: str) -> str:
    pareto, chosen = set(doc.get("pareto") or []), doc.get("chosen") or {}
    cols = [Col("trial", lambda r, _i: num(r[1]["number"], f"#{r[1]['number']}", f"trials.{r[0]}.number")),
            Col("state", lambda r, _i: (f'<td><span class="badge {_STATE_BADGE.get(r[1].get("state"), "muted")}">'
                                        f'{esc(r[1].get("state"))}</span>'
                                        + (' <span class="badge ok">Pareto</span>' if r[1]["number"] in pareto else "")
                                        + "".join(f' <span class="badge muted">chosen: {esc(o)}</span>'
                                                  for o, n in chosen.items() if n == r[1]["number"])
                                        + "</td>"), numeric=False)]
    for col in _values_cols(doc["objectives"], "trials"):
        cols.append(Col(col.header, lambda r, _i, c=col: c.cell(r[1], r[0]), title=col.title))
    cols += [Col("params", lambda r, _i: f"<td><code>{esc(_params(r[1].get('params')))}</code></td>", numeric=False),
             Col("s", lambda r, _i: num(r[1].get("seconds"), _fmt(r[1].get("seconds")), f"trials.{r[0]}.seconds"),
                 title="wall time of the trial (seconds)"),
             Col("note", lambda r, _i: text_cell(r[1].get("error") or _failed_checks(r[1])), numeric=False)]
    return table(cols, rows, id_=id_, row_class=lambda r: "chosen" if r[1]["number"] in chosen.values() else None)


def _failed_checks(trial: dict) -> str:
    failed = [c.get("name", "?") for c in trial.get("checks") or [] if isinstance(c, dict) and not c.get("ok")]
    return f"failed: {', '.join(failed)}" if failed else ""


def render_tune(doc: dict, base: Path | None = None, top_n: int = 5, source: str | None = None) -> str:
    study = doc.get("study") or {}
    trials = doc["trials"]
    states = {}
    for t in trials:
        states[t.get("state")] = states.get(t.get("state"), 0) + 1
    objectives = doc["objectives"]
    model = Path(str(doc.get("model") or "model")).name
    meta = [("recipe", doc.get("recipe")), ("model", doc.get("model")), ("study", study.get("name")),
            ("storage", study.get("storage")),
            ("objectives", "; ".join(f"{o['name']} ({_arrow(o.get('direction', 'minimize'))})" for o in objectives))]
    cache = doc.get("cache") or {}
    cards = [("trials", len(trials), str(len(trials)), None)]
    cards += [(state, n, str(n), None) for state, n in sorted(states.items(), key=lambda kv: str(kv[0]))]
    cards += [("Pareto front", len(doc.get("pareto") or []), str(len(doc.get("pareto") or [])), None)]
    if cache:
        cards.append(("stage cache hits / misses", cache.get("hits"), f"{cache.get('hits')} / {cache.get('misses')}",
                      "cache.hits"))
    if doc.get("seconds") is not None:
        cards.append(("wall time", doc["seconds"], f"{doc['seconds']:.1f} s", "seconds"))
    header = (f"<h1>edgeopt tune report: {esc(model)}</h1>"
              f'<p class="sub">{len(trials)} trials of the recipe\'s search space, '
              f"{len(objectives)} objectives</p>"
              "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta if v) + "</dl>"
              '<div class="cards">' + "".join(
                  f'<div class="card"><div class="k">{esc(k)}</div>{num(v, text, key, cls="v", tag="div")}</div>'
                  for k, v, text, key in cards) + "</div>")
    sections = []
    svg = pareto_chart(doc)
    lead = (f"Each trial is one recipe from the search space, run and verified like `edgeopt run`. The front "
            f"(blue, numbered) holds the trials no other trial beats on every objective; crosses failed a "
            f"recipe check; the star is the recipe as written.")
    if svg:
        extra = (note(f"Shown: the first two of {len(objectives)} objectives.") if len(objectives) > 2 else "")
        sections.append(section("pareto", "Pareto front", lead,
                                figure(svg, f"{objectives[0]['name']} against {objectives[1]['name']} for every "
                                            "trial with values.", "fig-pareto") + extra))
    else:
        sections.append(section("pareto", "Pareto front", "",
                                note("One objective only: no Pareto plane to draw; the trials table ranks them.")))
    index = {t["number"]: i for i, t in enumerate(trials)}
    front = [(index[n], trials[index[n]]) for n in doc.get("pareto") or [] if n in index]
    base_html = ""
    baseline = (doc.get("baseline") or {}).get("values")
    if baseline:
        error = (doc.get("baseline") or {}).get("error")
        base_html = ("<h3>Baseline (the recipe as written)</h3>" + (note(f"Baseline: {error}") if error else "")
                     + table([Col(o["name"], lambda b, i, n=o["name"]: num(b.get(n), _fmt(b.get(n)),
                                                                          f"baseline.values.{n}"))
                              for o in objectives], [baseline], id_="baseline-table"))
    sections.append(section("front", "Pareto-optimal trials",
                            "The trials worth choosing from; highlighted rows are the ones chosen per objective.",
                            _trials_table(doc, front, "front-table") + base_html))
    sections.append(section("trials", "All trials", "Every trial in the order it ran.",
                            _trials_table(doc, list(enumerate(trials)), "trials-table")))
    footer = (f"edgeopt {esc(doc.get('edgeopt_version') or '?')} tune document"
              + f"; report by edgeopt {esc(__version__)}.")
    return document(f"edgeopt tune report: {model}", header, sections, footer, "tune")
