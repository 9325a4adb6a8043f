"""matplotlib figures -> inline SVG strings, and the run report's bar charts.

Figures are built on `matplotlib.figure.Figure` (no pyplot state) with the Agg backend. The SVG keeps
text as text (svg.fonttype none: selectable, searchable), gets a fixed hash salt and no date (same
document -> same bytes), loses its XML prolog and namespace URLs (inline in HTML they are implied),
and every id inside it is prefixed with the chart's id so several charts share one page safely.
"""

from __future__ import annotations

import io
import re
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after the backend is chosen)

from edgeopt.report.html.style import (CLASS_COLORS, CLASS_LABELS, DEVICE_COLORS, GRID, INK, MUTED,  # noqa: E402
                                       OP_CLASSES)
from edgeopt.report.units import count, nbytes  # noqa: E402


def rc(salt: str) -> dict:
    return {
        "svg.fonttype": "none", "svg.hashsalt": salt, "svg.image_inline": True,
        "font.family": "DejaVu Sans", "font.size": 9, "text.color": INK,
        "axes.edgecolor": "#b8bec7", "axes.labelcolor": INK, "axes.titlesize": 10, "axes.titleweight": "bold",
        "axes.titlelocation": "left", "axes.titlepad": 8, "axes.labelsize": 9,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True,
        "grid.color": GRID, "grid.linewidth": 0.7, "xtick.color": MUTED, "ytick.color": MUTED,
        "xtick.labelcolor": INK, "ytick.labelcolor": INK, "xtick.labelsize": 8.5, "ytick.labelsize": 8.5,
        "legend.frameon": False, "legend.fontsize": 8.5, "figure.facecolor": "white",
        "path.simplify": False,
    }


@contextmanager
def chart_style(salt: str):
    with matplotlib.rc_context(rc(salt)):
        yield


def safe(text) -> str:
    """Text for a matplotlib label: a `$` would start mathtext."""
    return str(text).replace("$", r"\$")


_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def to_svg(fig: Figure, chart_id: str, label: str) -> str:
    """The figure as an inline <svg id=chart_id class="chart-svg">; deterministic for the same figure."""
    buf = io.StringIO()
    with chart_style(chart_id):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = _PROLOG.sub("", buf.getvalue(), count=1)
    svg = _METADATA.sub("", svg)
    svg = _XMLNS.sub("", svg)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{chart_id}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{chart_id}-{m.group(1)})", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{chart_id}-{m.group(1)}"', svg)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    svg = svg.replace("<svg ", f'<svg id="{chart_id}" class="chart-svg" role="img" aria-label="{label}" ', 1)
    return svg.strip() + "\n"


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


# -- run: cost per stage ---------------------------------------------------------------------------

def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} ms" if value < 1 else f"{value:.2f} ms"


def stage_bars(doc: dict, devices: list[str], chart_id: str = "chart-stages") -> str:
    """One horizontal bar per stage in each panel: MACs, weight bytes, then est. latency per device.
    The last stage (the output) is drawn solid, the others lighter."""
    stages = doc["stages"]
    labels = [safe(f"{s['stage']}  {s['pass']}") for s in stages]
    panels = [("MACs", [s.get("macs") for s in stages], count, "#3b6fb6"),
              ("weight bytes", [s.get("weight_bytes") for s in stages], nbytes, "#2f9e72")]
    for i, name in enumerate(devices):
        values = [((s.get("devices") or {}).get(name) or {}).get("est_latency_ms") for s in stages]
        if all(v is None for v in values) and len(devices) == 1:
            values = [s.get("est_latency_ms") for s in stages]
        panels.append((f"est. latency on {name}", values, _ms, DEVICE_COLORS[i % len(DEVICE_COLORS)]))
    if not devices:
        panels.append(("est. latency", [s.get("est_latency_ms") for s in stages], _ms, DEVICE_COLORS[0]))
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    label_width = max(len(t) for t in labels) * 0.062 + 0.3
    with chart_style(chart_id):
        fig = new_figure(label_width + 2.45 * ncols, nrows * (0.3 * len(stages) + 0.95))
        axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
        y = list(range(len(stages)))
        for k, ax in enumerate(axes.flat):
            if k >= len(panels):
                ax.set_visible(False)
                continue
            title, values, fmt, color = panels[k]
            heights = [v or 0 for v in values]
            bars = ax.barh(y, heights, color=color, height=0.62)
            for bar, value in zip(bars, values):
                bar.set_alpha(0.5)
                if value is None:
                    bar.set_visible(False)
            bars[-1].set_alpha(1.0)
            top = max(heights) or 1.0
            ax.set_xlim(0, top * 1.5)
            for yi, value in zip(y, values):
                ax.text((value or 0) + top * 0.03, yi, fmt(value), va="center", ha="left", fontsize=8, color=INK)
            ax.set_title(safe(title))
            ax.set_xticks([])  # every bar carries its value
            ax.spines["bottom"].set_visible(False)
            ax.grid(visible=False)
            ax.tick_params(axis="y", length=0)
            ax.set_yticks(y, labels)
            ax.invert_yaxis() if k == 0 else None
    return to_svg(fig, chart_id, "MACs, weight bytes and estimated latency per stage")


# -- run: latency by op class ------------------------------------------------------------------------

def class_shares(by_device: dict[str, dict[str, float]], chart_id: str = "chart-opclass") -> str:
    """One 100 % bar per device split by op class (est. latency of the last stage's layers)."""
    names = list(by_device)
    with chart_style(chart_id):
        fig = new_figure(9.6, 0.5 * len(names) + 0.9)
        ax = fig.subplots()
        for yi, name in enumerate(names):
            sums = by_device[name]
            total = sum(sums.values()) or 1.0
            left = 0.0
            for cls in OP_CLASSES:
                share = sums.get(cls, 0.0) / total
                if share <= 0:
                    continue
                ax.barh(yi, share * 100, left=left * 100, color=CLASS_COLORS[cls], height=0.6,
                        edgecolor="white", linewidth=0.8, label=CLASS_LABELS[cls] if yi == 0 else None)
                if share >= 0.06:
                    ax.text((left + share / 2) * 100, yi, f"{share * 100:.0f}%", ha="center", va="center",
                            fontsize=8, color="white", fontweight="bold")
                left += share
        ax.set_yticks(range(len(names)),
                      [safe(f"{n}  ({_ms(sum(by_device[n].values()))})") for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of the estimated latency of the layers (%)")
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
    return to_svg(fig, chart_id, "Estimated latency by op class per device")
