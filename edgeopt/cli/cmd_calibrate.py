"""`edgeopt calibrate`: fit a device profile to measurements, or the host profile to this machine."""

from __future__ import annotations

from pathlib import Path

import click

from edgeopt.cli.options import Progress, format_option, quiet_option
from edgeopt.errors import UserError
from edgeopt.report import Column, Table, emit


@click.command("calibrate")
@click.argument("device", metavar="DEVICE")
@click.option("--measurements", "measurements", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV of measured latencies (model or arch + res, latency_ms; optional device_key, "
                   "runtime_key, precision_key, threads_n): fit DEVICE's free figures to them.")
@click.option("--models", "models_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("build/device_truth/onnx"), show_default=True,
              help="Folder of ARCH_RES.onnx files for rows that name an architecture.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Device YAML to write (default: DEVICE-calibrated.yaml here).")
@click.option("--all-rows", is_flag=True,
              help="Use every row, not only those whose device / runtime / precision / threads match DEVICE.")
@click.option("--budget", type=click.FloatRange(min=0.005, max=5.0), default=0.6, show_default=True,
              help="host only: seconds of timing per micro-benchmark (about 20 of them).")
@format_option
@quiet_option
def command(device, measurements, models_dir, out, all_rows, budget, fmt, quiet):
    """Fit DEVICE (a profile name or YAML) to --measurements and write a device YAML whose fitted
    figures are marked C with the rows they came from, the fit's error and its leave-one-architecture-out
    validation. `edgeopt calibrate host` (no --measurements) instead runs onnxruntime micro-benchmarks
    here and stores fitted host factors in the user cache folder ($EDGEOPT_CACHE_DIR, else
    $XDG_CACHE_HOME/edgeopt, else ~/.cache/edgeopt), which `--device host` then uses.
    """
    if measurements is not None:
        _fit_measurements(device, measurements, models_dir, out, all_rows, fmt)
        return
    if device != "host":
        raise UserError(f"calibrate {device!r}: give --measurements FILE.csv (measured latencies on that "
                        "device); only the host can be calibrated without them")
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


def _fit_measurements(name, measurements, models_dir, out, all_rows, fmt):
    import dataclasses

    from edgeopt.devices import load_device
    from edgeopt.devices.fitting import TermCache, fit
    from edgeopt.devices.measurements import matches, read_measurements, usable
    from edgeopt.devices.validation import validate
    from edgeopt.devices.writer import apply_fit, device_data, write_yaml

    device = load_device(name)
    rows = usable(read_measurements(measurements))
    if not all_rows:
        rows = [r for r in rows if matches(device, r)]
    if not rows:
        raise UserError(f"{measurements}: no row matches {device.name} ({device.device_key} {device.runtime} "
                        f"{'/'.join(device.precisions)}, threads {device.threads}); check the columns or use --all-rows")
    cache = TermCache(models_dir)
    result = fit(device, rows, cache)
    check = validate(device, rows, cache, result)
    stem = Path(name).stem if name.endswith((".yaml", ".yml")) else device.name
    out = out or Path(f"{stem}-calibrated.yaml")
    fitted_name = out.stem
    data = device_data(dataclasses.replace(device, name=fitted_name))
    data = apply_fit(data, result, check, f"{measurements.name}")
    write_yaml(data, out)
    table_rows = [{"figure": k, "prior": result.priors[k], "fitted": result.values[k],
                   "moved": result.values[k] / result.priors[k]} for k in result.free]
    fit_rows = [{"model": r.label(), "measured_ms": r.latency_ms, "predicted_ms": p, "ratio": p / r.latency_ms}
                for r, p in zip(result.rows, result.predicted_ms)]
    loao = check["loao"]
    footer = [f"in sample: {result.stats['within_25']:.0%} of {len(rows)} rows within ±25 %, "
              f"median error {result.stats['median_error']:.0%}",
              (f"leave-one-architecture-out: {loao['within_25']:.0%} within ±25 %, median error "
               f"{loao['median_error']:.0%}" if loao.get("rows") else
               "leave-one-architecture-out: needs rows of two architectures or more"),
              f"written to {out} (use it as --device {out})"]
    figures = Table(title=f"{device.name} fitted to {measurements.name}", rows=table_rows, footer=footer, columns=[
        Column("figure", "figure", justify="left"), Column("prior", "prior"), Column("fitted", "fitted"),
        Column("moved", "x")])
    per_row = Table(title="rows", rows=fit_rows, columns=[
        Column("model", "model", justify="left"), Column("measured_ms", "measured ms"),
        Column("predicted_ms", "fitted ms"), Column("ratio", "fitted / measured")])
    emit({"device": device.name, "out": str(out), "values": result.values, "priors": result.priors,
          "free": result.free, "fit": result.stats, "validation": check,
          "rows": fit_rows}, [figures, per_row], fmt)
