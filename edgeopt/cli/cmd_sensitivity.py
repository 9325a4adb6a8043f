"""`edgeopt sensitivity MODEL`: prune each layer alone at several ratios, then propose per-layer ratios."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from edgeopt.cli.options import Progress, format_option, input_shape_option, quiet_option
from edgeopt.errors import UserError
from edgeopt.graph.io import load_model
from edgeopt.graph.shapes import resolve_input_shapes
from edgeopt.prune.core import PruneConfig
from edgeopt.prune.criteria import CRITERIA
from edgeopt.prune.sensitivity import Budget, propose, scan
from edgeopt.report import Column, Table, emit
from edgeopt.report.units import count, fixed
from edgeopt.verify.inputs import load_data, random_inputs


def _ratios(ctx, param, value: str) -> list[float]:
    try:
        ratios = sorted({float(r) for r in value.split(",") if r.strip()})
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, e.g. 0.25,0.5,0.75; got {value!r}") from None
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise click.BadParameter(f"every ratio must be in (0, 1); got {value!r}")
    return ratios


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


@click.command("sensitivity")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help=".npz with one array per input (and optionally `labels`) to measure on; default: seeded "
                   "random inputs (fidelity only).")
@click.option("--calib", type=click.Path(path_type=Path, dir_okay=False),
              help=".npz the data-driven criteria and reconstruction learn from (default: --data).")
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True, callback=_ratios,
              help="Fractions of channels to remove from each layer, comma-separated.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="l1", show_default=True,
              help="Which channels go (as prune_channels' criterion).")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep a multiple of this many channels.")
@click.option("--min-channels", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Layer-name globs never pruned (repeatable).")
@click.option("--reconstruct", is_flag=True, help="Refit the next layers by least squares in every trial.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0, max=1),
              help="Budget of the proposal: accuracy drop as a fraction (0.01 = 1 point); needs labels. "
                   "Default 0.01 with labels.")
@click.option("--min-cosine", type=click.FloatRange(min=-1, max=1),
              help="Budget of the proposal: cosine of the outputs against the original (default 0.99 without labels).")
@click.option("--seed", type=int, default=0, show_default=True)
@input_shape_option
@format_option
@quiet_option
def command(model_path, data, calib, ratios, criterion, round_to, min_channels, exclude, reconstruct,
            max_accuracy_drop, min_cosine, seed, input_shapes, fmt, quiet):
    """Prune each channel group of MODEL alone at several ratios; report fidelity, accuracy and MACs saved
    per layer, and propose per-layer ratios (a prune_channels `ratio` mapping) that meet a fidelity budget
    at the most MACs saved."""
    progress = Progress(quiet)
    model = load_model(model_path)
    shapes = resolve_input_shapes(model, input_shapes)
    inputs = load_data(data, model) if data else random_inputs(model, shapes, seed)
    calib_feeds = load_data(calib, model).feeds if calib else (inputs.feeds if data else None)
    if (criterion in ("apoz", "thinet") or reconstruct) and calib_feeds is None:
        raise UserError(f"criterion {criterion}{' and --reconstruct' if reconstruct else ''} need calibration "
                        "data: give --data or --calib (an .npz of inputs)")
    if max_accuracy_drop is not None and inputs.labels is None:
        raise UserError("--max-accuracy-drop needs labelled data: give --data with a `labels` array")
    if max_accuracy_drop is None and min_cosine is None:
        if inputs.labels is not None:
            max_accuracy_drop = 0.01
        else:
            min_cosine = 0.99
    budget = Budget(max_accuracy_drop, min_cosine)
    config = PruneConfig(ratio=0.0, criterion=criterion, round_to=round_to, min_channels=min_channels,
                         exclude=list(exclude), reconstruct=reconstruct, balance=False)
    progress.info(f"scanning {model_path.name} on {inputs.batch} samples of {inputs.source}")
    result, evaluate = scan(model, config, ratios, inputs.feeds, inputs.labels, calib_feeds, input_shapes, seed,
                            log=progress.info)
    proposal = propose(model, result, evaluate, config, budget, calib_feeds, input_shapes, seed, log=progress.info)

    layers = [t.as_dict(result.baseline_accuracy) for t in result.trials]
    for row in layers:
        row["macs_saved_pct"] = row["macs_saved"] / result.macs_before if result.macs_before else None
    doc = {"model": str(model_path), "data": inputs.source, "samples": inputs.batch, "criterion": criterion,
           "round_to": round_to, "reconstruct": reconstruct, "macs": result.macs_before,
           "accuracy": result.baseline_accuracy, "layers": layers, "frozen": result.frozen, "proposal": None}
    tables = [Table(
        f"sensitivity of {model_path.name} ({criterion}{', reconstructed' if reconstruct else ''}; "
        f"{inputs.batch} samples of {inputs.source})",
        [Column("layer", "layer", justify="left"), Column("channels", "ch"), Column("kept", "kept"),
         Column("macs_saved_pct", "MACs saved", _pct), Column("rel_error", "rel err", fixed(4)),
         Column("cosine", "cosine", fixed(4)), Column("top1_agreement", "top-1 agr", fixed(3)),
         Column("accuracy", "accuracy", fixed(4)), Column("accuracy_drop", "acc drop", fixed(4))],
        layers)]
    if proposal is not None:
        snippet = yaml.safe_dump([{"prune_channels": {"ratio": proposal.ratios, "criterion": criterion,
                                                      "round_to": round_to, "min_channels": min_channels,
                                                      "reconstruct": reconstruct}}],
                                 sort_keys=False, default_flow_style=None).strip()
        m = proposal.measured
        doc["proposal"] = {
            "budget": budget.describe(), "met": proposal.met, "ratios": proposal.ratios,
            "macs_before": proposal.macs_before, "macs_after": proposal.macs_after,
            "macs_saved_pct": proposal.macs_saved / proposal.macs_before if proposal.macs_before else None,
            "rel_error": m.get("rel_error"), "cosine": m.get("cosine"), "top1_agreement": m.get("top1_agreement"),
            "accuracy": m.get("accuracy"), "recipe": snippet}
        rows = [{"layer": name, "ratio": r} for name, r in proposal.ratios.items()]
        tables.append(Table(
            "proposed ratios" + ("" if proposal.met else " (budget NOT met: nothing pruned meets it)"),
            [Column("layer", "layer", justify="left"), Column("ratio", "ratio", fixed(4))], rows,
            footer=[f"budget: {budget.describe()}",
                    f"MACs {count(proposal.macs_before)} -> {count(proposal.macs_after)} "
                    f"(-{_pct(doc['proposal']['macs_saved_pct'])}); cosine {fixed(4)(m.get('cosine'))}; "
                    f"accuracy {fixed(4)(m.get('accuracy'))} (was {fixed(4)(result.baseline_accuracy)})",
                    "recipe:", snippet]))
    emit(doc, tables, fmt)
