"""`edgeopt report RUN.json|TUNE.json -o report.html`: one self-contained HTML report with charts."""

from __future__ import annotations

from pathlib import Path

import click

from edgeopt.cli.options import Progress, quiet_option


@click.command("report")
@click.argument("document", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML (default: the document's path with .html).")
@click.option("--top", type=click.IntRange(0, 50), default=5, show_default=True,
              help="How many of the slowest layers the roofline numbers and lists.")
@quiet_option
def command(document, output, top, quiet):
    """Write an HTML report of DOCUMENT, the JSON of `edgeopt run --format json` or `edgeopt tune
    --format json`: the stage table, cost per stage, per-layer rooflines and latency by op class for
    a run; the Pareto front and the trials for a tune. One file, no network needed to view it.

    A run document without per-layer rows (a plain `run --format json`) is profiled from its output
    model when that file exists; `edgeopt run --report` keeps the rows in the document."""
    from edgeopt.report.html import load_document, render_html, write_html

    progress = Progress(quiet)
    doc = load_document(document)
    output = output or document.with_suffix(".html")
    if output.resolve() == document.resolve():
        raise click.UsageError(f"{output}: the report would overwrite its input; choose another -o")
    text = render_html(doc, base=document.resolve().parent, top=top, source=document.name)
    write_html(output, text)
    progress.info(f"wrote {output}")
