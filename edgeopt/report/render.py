"""Table / JSON / CSV / Markdown output."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeopt.report.units import plain

FORMATS = ("table", "json", "csv", "markdown")


@dataclass
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = plain
    justify: str = "right"
    wrap: bool = False  # long prose (help, summaries) wraps; figures never do
    priority: int = 0  # on a narrow terminal the highest numbers are dropped first (0: always shown)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)  # extra lines printed under the table


def _cells(table: Table, row: dict, human: bool) -> list[str]:
    if human:
        return [col.fmt(row.get(col.key)) for col in table.columns]
    return ["" if row.get(col.key) is None else str(row.get(col.key)) for col in table.columns]


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, default=_json_default) + "\n"


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_csv(tables: list[Table]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i, table in enumerate(tables):
        if i:
            out.write("\n")
        writer.writerow([col.key for col in table.columns])
        for row in table.rows:
            writer.writerow(_cells(table, row, human=False))
    return out.getvalue()


def to_markdown(tables: list[Table]) -> str:
    parts = []
    for table in tables:
        lines = [f"### {table.title}", ""] if table.title else []
        lines.append("| " + " | ".join(col.header for col in table.columns) + " |")
        lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(_cells(table, row, human=True)) + " |")
        if table.footer:
            lines.append("")
            lines.extend(table.footer)
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _need(table: Table, cols: list[Column]) -> int:
    """Characters a rich table of these columns needs with every cell whole: one border, and 3 (pad,
    pad, border) per column; prose that wraps counts 12."""
    def longest(col):
        return max(len(x) for x in [col.header] + [col.fmt(row.get(col.key)) for row in table.rows])

    return 1 + sum(3 + (12 if c.wrap else longest(c)) for c in cols)


def _fit(table: Table, width: int) -> tuple[list[Column], list[Column]]:
    """The columns that fit `width` with every cell whole (dropping the highest priority numbers
    first), and the ones dropped. Wrapping columns (prose) take what is left and never drop."""
    shown = list(table.columns)
    for level in sorted({c.priority for c in table.columns if c.priority}, reverse=True):
        if _need(table, shown) <= width:
            break
        shown = [c for c in shown if c.priority != level]
    return shown, [c for c in table.columns if c not in shown]


def print_rich(tables: list[Table], stream, width: int | None = None, wide: bool = False) -> None:
    """Rich tables on a terminal of `width` columns (the terminal's own when None; 200 off a terminal).
    Columns are dropped by priority until every number prints whole; `wide` keeps them all."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console(file=stream, highlight=False, soft_wrap=False,
                      width=width or (None if stream.isatty() else 200))
    for table in tables:
        shown, dropped = (table.columns, []) if wide else _fit(table, console.width)
        if wide:  # every column, each cell whole: the lines may run past the terminal's edge
            console.width = max(console.width, _need(table, shown))
        rich_table = RichTable(title=escape(table.title) if table.title else None, title_justify="left")
        for col in shown:
            rich_table.add_column(col.header, justify=col.justify, no_wrap=not col.wrap,
                                  ratio=1 if col.wrap else None)
        for row in table.rows:
            rich_table.add_row(*(escape(col.fmt(row.get(col.key))) for col in shown))
        console.print(rich_table)
        if dropped:
            console.print(escape(f"  not shown at {console.width} columns: {', '.join(c.header for c in dropped)} "
                                 "(--wide shows them; --format json / csv have every figure)"))
        for line in table.footer:
            console.print(escape(line))


def emit(doc: dict, tables: list[Table], fmt: str, stream=None, wide: bool = False) -> None:
    """Print the result in the chosen format on stdout (or stream)."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(to_json(doc))
    elif fmt == "csv":
        stream.write(to_csv(tables))
    elif fmt == "markdown":
        stream.write(to_markdown(tables))
    else:
        print_rich(tables, stream, wide=wide)
    stream.flush()
