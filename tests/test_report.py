"""Rendering: what the table / csv / markdown outputs show."""

from __future__ import annotations

import io

from edgeopt.report import Column, Table, emit
from edgeopt.report.units import count, nbytes


def test_table_output_keeps_square_brackets():
    buf = io.StringIO()
    emit({}, [Table("t [x]", [Column("a", "a")], [{"a": "[bold]y[/bold] [1, 2]"}], footer=["f [z]"])], "table", buf)
    assert "[bold]y[/bold] [1, 2]" in buf.getvalue() and "t [x]" in buf.getvalue() and "f [z]" in buf.getvalue()


def test_units():
    assert count(2_824_704) == "2.82 M" and count(None) == "-" and count(512) == "512"
    assert nbytes(1_572_864) == "1.50 MiB" and nbytes(100) == "100 B"


def test_csv_and_markdown_show_raw_and_human_values():
    table = Table("t", [Column("macs", "MACs", count), Column("x", "x")], [{"macs": 2_000_000, "x": None}])
    csv_out, md_out = io.StringIO(), io.StringIO()
    emit({}, [table], "csv", csv_out)
    emit({}, [table], "markdown", md_out)
    assert csv_out.getvalue() == "macs,x\n2000000,\n"
    assert "| 2.00 M | - |" in md_out.getvalue()
