"""The per-layer roofline of one device: ops per byte against throughput, the roof, the ridge.

The roof at compute precision p is min(peak[p], intensity x DRAM bandwidth); its ridge, where the
two meet, is peak[p] / bandwidth ops per byte (the profiler's `ridge_ops_per_byte`). A layer is a
point at its arithmetic intensity (the profiler's: ops / bytes it touches) and the throughput its
estimate implies (its group's ops / its est. latency), colored by op class; the layers with the
largest est. latency are numbered, and listed in a table under the chart.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from edgeopt.devices import Device
from edgeopt.report.html.charts import chart_style, new_figure, safe, to_svg
from edgeopt.report.html.style import CLASS_COLORS, INK, MUTED, OP_CLASSES, report_class


@dataclass
class Roof:
    precision: str
    peak_ops_per_s: float
    bandwidth: float  # bytes/s

    @property
    def ridge(self) -> float:
        return self.peak_ops_per_s / self.bandwidth


@dataclass
class Point:
    index: int  # in the device's layer list
    layer: dict
    intensity: float
    gops: float
    op_class: str


def points(rows: list[dict]) -> list[Point]:
    """Layers with a cost of their own (fused and view layers cost nothing here)."""
    out = []
    for i, row in enumerate(rows):
        ai, ms, ws = row.get("arithmetic_intensity"), row.get("est_latency_ms"), row.get("working_set_bytes")
        if not ai or not ms or not ws or ai <= 0 or ms <= 0:
            continue
        ops = ai * ws * (row.get("runs") or 1)  # the group's ops (an anchor carries what is fused into it)
        out.append(Point(i, row, ai, ops / (ms * 1e-3) / 1e9, report_class(row)))
    return out


def roofs(device: Device, pts: list[Point]) -> list[Roof]:
    """One roof per compute precision the layers use (the device's default when none is recorded)."""
    precisions = sorted({p.layer.get("compute_precision") or device.default_precision for p in pts}
                        or {device.default_precision})
    bandwidth = device.dram_bytes_per_s
    out = []
    for p in precisions:
        peak = device.peak_ops_per_s(p)
        if peak and bandwidth:
            out.append(Roof(p, peak, bandwidth))
    return out


def worst(pts: list[Point], n: int) -> list[Point]:
    return sorted(pts, key=lambda p: (-p.layer["est_latency_ms"], p.index))[:n]


# label offsets (points) tried in turn: the first that keeps clear of the labels already placed
_OFFSETS = ((7, 5), (7, -13), (-14, 5), (-14, -13), (0, 11), (0, -19), (14, -4), (-21, -4))
_CLEAR = 11.0  # points between two labels' anchors


def _place_labels(ax, fig, top: list[Point]) -> None:
    """Number the slowest layers next to their points without labels landing on each other."""
    fig.canvas.draw_without_rendering() if hasattr(fig.canvas, "draw_without_rendering") else None
    scale = fig.dpi / 72.0
    placed: list[tuple[float, float]] = []
    for rank, p in enumerate(top, 1):
        px, py = ax.transData.transform((p.intensity, p.gops)) / scale
        choice = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            x, y = px + dx, py + dy
            if all((x - qx) ** 2 + (y - qy) ** 2 >= _CLEAR ** 2 for qx, qy in placed):
                choice = (dx, dy)
                break
        placed.append((px + choice[0], py + choice[1]))
        ax.scatter([p.intensity], [p.gops], s=60, facecolor="none", edgecolor=INK, linewidth=1.0, zorder=5)
        ax.annotate(str(rank), (p.intensity, p.gops), xytext=choice, textcoords="offset points",
                    fontsize=8.5, fontweight="bold", color=INK, zorder=6)


def roofline_chart(device: Device, pts: list[Point], device_roofs: list[Roof], top: list[Point],
                   chart_id: str) -> str:
    xs = [p.intensity for p in pts] + [r.ridge for r in device_roofs]
    ys = [p.gops for p in pts] + [r.peak_ops_per_s / 1e9 for r in device_roofs]
    xmin, xmax = min(xs) / 3, max(xs) * 3
    ymin, ymax = min(ys) / 4, max(ys) * 3
    with chart_style(chart_id):
        fig = new_figure(6.2, 3.9)
        ax = fig.subplots()
        ax.set_xscale("log")
        ax.set_yscale("log")
        for k, roof in enumerate(device_roofs):
            peak = roof.peak_ops_per_s / 1e9
            line_x = [xmin, roof.ridge, xmax]
            line_y = [xmin * roof.bandwidth / 1e9, peak, peak]
            ax.plot(line_x, line_y, color=INK, linewidth=1.6, solid_capstyle="butt", zorder=3,
                    gid=f"roof-{roof.precision}")
            ridge = ax.axvline(roof.ridge, color=MUTED, linestyle=(0, (3, 3)), linewidth=1.0, zorder=2)
            ridge.set_gid(f"ridge-{roof.precision}")
            ax.annotate(f"{roof.precision} peak {peak:g} GOPS", (xmax, peak), xytext=(-4, 4),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8, color=INK)
            ax.annotate(f"ridge {roof.ridge:.3g} ops/B" + (f" ({roof.precision})" if len(device_roofs) > 1 else ""),
                        (roof.ridge, ymin), xytext=(-3, 4), textcoords="offset points", rotation=90,
                        ha="right", va="bottom", fontsize=8, color=MUTED)
        for cls in OP_CLASSES:
            mine = [p for p in pts if p.op_class == cls]
            if mine:
                ax.scatter([p.intensity for p in mine], [p.gops for p in mine], s=26, color=CLASS_COLORS[cls],
                           edgecolor="white", linewidth=0.6, zorder=4, gid=f"points-{cls}")
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        for axis, (lo, hi) in ((ax.xaxis, (xmin, xmax)), (ax.yaxis, (ymin, ymax))):
            # under two decades a tick per decade is too few: 1, 2, 5 of each
            axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if hi / lo > 100 else (1.0, 2.0, 5.0),
                                              numticks=12))
            axis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("arithmetic intensity (ops per byte)")
        ax.set_ylabel("throughput (GOPS, from est. latency)")
        ax.set_title(safe(device.name))
        ax.grid(which="minor", visible=False)
        _place_labels(ax, fig, top)
    return to_svg(fig, chart_id, f"Roofline of the last stage's layers on {device.name}")
