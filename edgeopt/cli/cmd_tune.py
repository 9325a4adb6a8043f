"""`edgeopt tune RECIPE`: search the recipe's `search:` space; the Pareto front of verified recipes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from edgeopt.cli.options import Progress, format_option, quiet_option
from edgeopt.errors import CheckFailed


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter("must be at least 1")
    return value


@click.command("tune")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--trials", "-n", type=int, default=40, show_default=True, callback=_positive,
              help="Finished trials the study should hold (a rerun resumes up to this many).")
@click.option("--timeout", type=float, help="Ask no new trial after this many seconds.")
@click.option("--seed", type=int, help="Sampler seed: with --jobs 1 (or the same --jobs) the same trials come out.")
@click.option("--jobs", "-j", type=int, callback=_positive,
              help="Trials at a time: local worker processes (default: the cores), or Ray tasks with --ray.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run each trial as a Ray task: auto, HOST:6379, ray://HOST:10001, or local (pip install 'edgeopt[ray]').")
@click.option("--output-dir", "-o", type=click.Path(path_type=Path, file_okay=False),
              help="Where the study, tune.json, trials.csv and pareto/ go (default build/tune/<recipe stem>).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Stage cache folder (default OUTPUT_DIR/cache); tunes that share one reuse each other's passes.")
@click.option("--storage", help="Optuna storage URL (default sqlite:///OUTPUT_DIR/study.db).")
@click.option("--measure", is_flag=True, help="Also measure onnxruntime latency of every trial (slower, noisy).")
@format_option
@quiet_option
def command(recipe, trials, timeout, seed, jobs, ray_address, output_dir, cache_dir, storage, measure, fmt, quiet):
    """Tune RECIPE: run trials of its `search:` space through the verified pipeline; print the Pareto front."""
    from edgeopt import progress as bars
    from edgeopt.report import emit
    from edgeopt.tune.executors import InlineExecutor, PoolExecutor, RayExecutor
    from edgeopt.tune.outputs import build_doc, front_tables, trial_records, write_outputs
    from edgeopt.tune.study import finished, open_study, prepare, run_loop

    log = Progress(quiet)
    bars.enable(not quiet)
    started = time.monotonic()
    out = output_dir or Path("build") / "tune" / recipe.stem
    setup = prepare(recipe, out, cache_dir, storage, measure, note=log.warn)
    study = open_study(setup, seed)
    already = len(finished(study))
    todo = max(0, trials - already)
    if ray_address:
        executor = RayExecutor(ray_address, jobs, setup.base)
    elif (jobs or os.cpu_count() or 1) > 1 and todo > 1:
        executor = PoolExecutor(min(jobs or os.cpu_count() or 1, todo))
    else:
        executor = InlineExecutor()
    if already:
        log.info(f"resuming study {setup.study_name}: {already} trials done, {todo} to go")
    best: dict = {}

    with bars.steps(f"tune {recipe.name}", todo) as advance:
        def on_result(number: int, result: dict) -> None:
            if result["state"] == "complete":
                for o in setup.objectives:
                    value = result["values"][o.name]
                    if o.name not in best or o.better(value, best[o.name]):
                        best[o.name] = value
            figures = " · ".join(f"{k} {v:.4g}" for k, v in best.items()) or "none feasible yet"
            advance(description=f"tune {recipe.name}: best {figures}")
            if not bars.shown():
                what = (", ".join(f"{k} {v:.4g}" for k, v in result["values"].items()) if result["values"] else "")
                failed_checks = [c["name"] for c in result["checks"] if not c["ok"]]
                why = (f" (failed {', '.join(failed_checks)})" if result["state"] == "infeasible"
                       else f": {result['error']}" if result["error"] else "")
                log.info(f"trial {number}: {result['state']} {what}{why} ({result['seconds']:.1f} s, "
                         f"{result['cached_stages']}/{result['stages']} stages cached)")

        try:
            stats = run_loop(setup, study, executor, trials, timeout, on_result)
        finally:
            executor.shutdown()
    records = trial_records(finished(study), setup)
    doc = build_doc(setup, records, stats.baseline, {"hits": stats.hits, "misses": stats.misses},
                    round(time.monotonic() - started, 3))
    write_outputs(setup, doc)
    if stats.interrupted:
        log.info(f"interrupted: {len(records)} trials are in the study ({setup.storage}); "
                 "run the same command again to resume")
        raise click.exceptions.Exit(130)
    emit(doc, front_tables(setup, doc), fmt)
    log.info(f"wrote {setup.out / 'tune.json'}, trials.csv and {len(doc['pareto'])} recipes in {setup.out / 'pareto'}")
    if not doc["pareto"]:
        raise CheckFailed("no trial met the recipe's checks (see trials.csv for the failed checks); "
                          "widen the search or relax the checks")

