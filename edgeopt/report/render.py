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


def print_rich(tables: list[Table], stream) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console(file=stream, highlight=False, soft_wrap=False,
                      width=None if stream.isatty() else 200)
    for table in tables:
        rich_table = RichTable(title=escape(table.title) if table.title else None, title_justify="left")
        for col in table.columns:
            rich_table.add_column(col.header, justify=col.justify, no_wrap=not col.wrap,
                                  ratio=1 if col.wrap else None)
        for row in table.rows:
            rich_table.add_row(*(escape(cell) for cell in _cells(table, row, human=True)))
        console.print(rich_table)
        for line in table.footer:
            console.print(escape(line))


def emit(doc: dict, tables: list[Table], fmt: str, stream=None) -> None:
    """Print the result in the chosen format on stdout (or stream)."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(to_json(doc))
    elif fmt == "csv":
        stream.write(to_csv(tables))
    elif fmt == "markdown":
        stream.write(to_markdown(tables))
    else:
        print_rich(tables, stream)
    stream.flush()
