"""What every chart and table shares: op-class colors, the page's CSS."""

from __future__ import annotations

# op classes as the report groups them; one color each, the same in every chart and table
OP_CLASSES = ("conv", "depthwise", "gemm", "elementwise", "pooling", "other")
CLASS_LABELS = {"conv": "conv", "depthwise": "depthwise", "gemm": "gemm / matmul", "elementwise": "elementwise",
                "pooling": "pooling", "other": "other"}
CLASS_COLORS = {"conv": "#3b6fb6", "depthwise": "#2f9e72", "gemm": "#d1495b", "elementwise": "#8e6bbf",
                "pooling": "#e09f3e", "other": "#8a8f98"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
            "MaxRoiPool", "RoiAlign", "MaxUnpool"}

ACCENT = "#d1495b"
INK = "#1f2733"
MUTED = "#6b7280"
GRID = "#e3e6eb"
DEVICE_COLORS = ("#3b6fb6", "#e09f3e", "#2f9e72", "#8e6bbf", "#d1495b", "#5b8fa8")


def report_class(layer: dict) -> str:
    """The report's op class of a profiler layer row: its cost class, pooling split from elementwise,
    data movement / views / quantize-dequantize as `other`."""
    if layer.get("op_type") in POOL_OPS:
        return "pooling"
    cls = layer.get("op_class")
    return cls if cls in ("conv", "depthwise", "gemm", "elementwise") else "other"


CSS = """
:root { --ink: #1f2733; --muted: #6b7280; --line: #e3e6eb; --bg: #f6f7f9; --ok: #1e7a46; --bad: #b42318; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header .sub { color: var(--muted); margin: 0 0 2px; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 12px 0 0; }
header dt { color: var(--muted); } header dd { margin: 0; word-break: break-all; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
          margin: 18px 0; }
h2 { font-size: 17px; margin: 0 0 4px; }
h3 { font-size: 14px; margin: 14px 0 4px; }
p.lead { color: var(--muted); margin: 0 0 12px; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 16px 0 0; font-weight: 600; }
.banner.ok { background: #e7f5ec; color: var(--ok); border: 1px solid #b7e1c6; }
.banner.bad { background: #fdecea; color: var(--bad); border: 1px solid #f5c2bd; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 150px; }
.card .k { color: var(--muted); font-size: 12px; } .card .v { font-size: 18px; font-weight: 600; }
.card .d { font-size: 12px; } .down { color: var(--ok); } .up { color: var(--bad); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 5px 7px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; vertical-align: bottom; }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
#checks-table, #baseline-table { width: auto; min-width: 420px; }
tr.chosen td { background: #fff7e6; }
td .params { display: block; color: var(--muted); font-size: 12px; max-width: 260px; }
td.passcell { min-width: 170px; }
p.ridges { margin: 4px 0 0; text-align: center; color: var(--muted); }
.pass { font-weight: 600; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #e7f5ec; color: var(--ok); } .badge.bad { background: #fdecea; color: var(--bad); }
.badge.muted { background: #eef0f3; color: var(--muted); }
ul.notes { margin: 8px 0 0; padding-left: 20px; color: var(--ink); }
ul.notes li { margin: 2px 0; }
.note { color: var(--muted); font-style: italic; }
figure.chart { margin: 14px 0 4px; }
figure.chart svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin: 6px 0 0; text-align: center; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
          vertical-align: -1px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
"""
