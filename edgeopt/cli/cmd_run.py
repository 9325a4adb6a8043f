"""`edgeopt run RECIPE`: run a recipe of passes, verify and profile every stage, write the output."""

from __future__ import annotations

from pathlib import Path

import click

from edgeopt.cli.options import Progress, device_option, format_option, input_shape_option, quiet_option
from edgeopt.errors import CheckFailed, UserError
from edgeopt.pipeline import RunOptions, run_recipe
from edgeopt.recipe.load import load_recipe
from edgeopt.report import emit
from edgeopt.report.run_tables import run_tables


@click.command("run")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the optimized model (overrides the recipe's `output`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set passes.2.ratio=0.5 (repeatable).")
@click.option("--keep-stages", type=click.Path(path_type=Path, file_okay=False),
              help="Also save every stage's model in this folder.")
@click.option("--no-measure", is_flag=True, help="Skip the onnxruntime latency measurement.")
@click.option("--verbose", "-v", is_flag=True, help="Print what each pass did to each node on stderr.")
@click.option("--wide", is_flag=True, help="Show every column of the stage table, whatever the terminal width.")
@click.option("--report", "report", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write an HTML report (stage table, charts, per-layer rooflines) here; also when a check "
                   "fails (the model is not written then). The JSON then carries the per-layer rows.")
@device_option(multiple=True)
@input_shape_option
@format_option
@quiet_option
def command(recipe, output, overrides, keep_stages, no_measure, verbose, wide, report, device, input_shapes, fmt,
            quiet):
    """Run RECIPE: apply its passes, verify and profile every stage, write the output model."""
    progress = Progress(quiet)
    parsed = load_recipe(recipe, list(overrides))
    if report is not None and report.is_dir():
        raise UserError(f"{report}: --report is a folder; give the report's file name, e.g. {report / 'report.html'}")
    options = RunOptions(output=output, keep_stages=keep_stages, devices=list(device) or None,
                         input_shapes=input_shapes, measure=not no_measure, log=progress.info,
                         layers=report is not None)
    try:
        doc = run_recipe(parsed, options)
    except CheckFailed as exc:
        if exc.doc is not None:
            if report is not None:  # the report of a failed gate shows why it failed
                _write_report(exc.doc, report, progress)
                message = str(exc).replace("; nothing was written", "")
                exc = CheckFailed(f"{message}; the model was not written (report: {report})", exc.doc)
            emit(exc.doc, run_tables(exc.doc), fmt, wide=wide)
        raise exc from None
    if report is not None:
        _write_report(doc, report, progress)
    if verbose:
        for stage in doc["stages"][1:]:
            for note in stage.get("notes", []):
                reason = f": {note['reason']}" if note.get("reason") else ""
                progress.info(f"  {stage['pass']}: {note['node']} ({note['op_type']}) {note['action']}{reason}")
    emit(doc, run_tables(doc), fmt, wide=wide)


def _write_report(doc: dict, path: Path, progress: Progress) -> None:
    from edgeopt.report.html import render_html, write_html  # matplotlib loads only when asked

    write_html(path, render_html(doc, base=Path.cwd()))
    progress.info(f"wrote {path}" + ("" if doc.get("ok", True) else " (checks failed: it shows why)"))
