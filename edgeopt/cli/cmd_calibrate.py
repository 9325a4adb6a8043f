"""`edgeopt calibrate host`: fit the host profile to onnxruntime measured on this machine."""

from __future__ import annotations

import click

from edgeopt.cli.options import Progress, format_option, quiet_option
from edgeopt.errors import UserError
from edgeopt.report import Column, Table, emit


@click.command("calibrate")
@click.argument("device", metavar="host")
@click.option("--budget", type=click.FloatRange(min=0.005, max=5.0), default=0.6, show_default=True,
              help="Seconds of timing per micro-benchmark (about 20 of them).")
@format_option
@quiet_option
def command(device, budget, fmt, quiet):
    """Run onnxruntime micro-benchmarks here and store fitted host factors in the user cache folder.

    Afterwards `--device host` uses them. The cache folder is $EDGEOPT_CACHE_DIR,
    else $XDG_CACHE_HOME/edgeopt, else ~/.cache/edgeopt.
    """
    if device != "host":
        raise UserError(f"calibrate {device!r}: only the host (this machine) can be calibrated; "
                        "use `edgeopt calibrate host`")
    from edgeopt.profile.calibrate import calibrate_host

    progress = Progress(quiet)
    result = calibrate_host(budget_s=budget, progress=progress.info)
    rows = [{"figure": f"efficiency.{k}", "value": v} for k, v in result["efficiency"].items()]
    rows += [{"figure": key, "value": result[key]} for key in ("dram_gbps", "layer_overhead_us", "run_overhead_us")]
    samples = Table(title="micro-benchmarks", rows=result["samples"], columns=[
        Column("class", "class", justify="left"), Column("what", "model", justify="left"),
        Column("ops", "ops"), Column("measured_ms", "measured ms")])
    table = Table(title=f"host calibration ({result['cpu']})", rows=rows,
                  footer=[f"stored in {result['path']}"], columns=[
                      Column("figure", "figure", justify="left"), Column("value", "value")])
    emit(result, [table, samples], fmt)
