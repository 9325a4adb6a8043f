"""`edgeopt compare A B`: how closely model B follows model A on the same inputs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeopt.cli.options import format_option, input_shape_option, quiet_option
from edgeopt.errors import CheckFailed, UserError
from edgeopt.graph.io import load_model
from edgeopt.graph.shapes import resolve_input_shapes
from edgeopt.report import Column, Table, emit
from edgeopt.report.units import fixed
from edgeopt.verify.fidelity import FIGURES, accuracies, accuracy, compare
from edgeopt.verify.inputs import load_data, random_inputs
from edgeopt.verify.runtime import make_session, run_batched


def _outputs(path: Path, model, inputs):
    try:
        return run_batched(make_session(model), model, inputs.feeds)
    except Exception as exc:  # onnxruntime's own exception types
        raise UserError(f"{path}: onnxruntime cannot run this model: {' '.join(str(exc).split())[:300]}") from None


@click.command("compare")
@click.argument("model_a", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("model_b", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help=".npz with one array per input (and optionally `labels`); default: seeded random inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--min-cosine", type=float, help="Exit 1 if the cosine similarity of any output is below this.")
@input_shape_option
@format_option
@quiet_option
def command(model_a, model_b, data, seed, min_cosine, input_shapes, fmt, quiet):
    """Fidelity of MODEL_B against MODEL_A: cosine, max abs error, top-1 agreement, accuracy, per output
    (the worst output's figures first)."""
    a, b = load_model(model_a), load_model(model_b)
    a_inputs = {i.name for i in a.graph.input} - {i.name for i in a.graph.initializer}
    b_inputs = {i.name for i in b.graph.input} - {i.name for i in b.graph.initializer}
    if a_inputs != b_inputs:
        raise UserError(f"{model_b}: its inputs {sorted(b_inputs)} differ from {model_a}'s {sorted(a_inputs)}; "
                        "compare models with the same inputs")
    inputs = load_data(data, a) if data else random_inputs(a, resolve_input_shapes(a, input_shapes), seed,
                                                           fill_fixed_batch=True)
    out_a, out_b = _outputs(model_a, a, inputs), _outputs(model_b, b, inputs)
    names = [o.name for o in a.graph.output]
    result = compare(out_a, out_b, names=names, labels=inputs.labels)
    if "problem" in result:
        raise UserError(f"{model_b}: cannot compare with {model_a}: {result['problem']}")
    # one figure per output, and the worst one under the old keys (verify/fidelity.py)
    doc = {"a": str(model_a), "b": str(model_b), "data": inputs.source, "samples": inputs.batch,
           **{k: result[k] for k in FIGURES}, "worst_output": result["worst_output"],
           "accuracy_a": accuracy(out_a, inputs.labels, names), "accuracy_b": accuracy(out_b, inputs.labels, names),
           "outputs": {n: {k: v for k, v in f.items() if k in FIGURES} for n, f in result["outputs"].items()}}
    for name, acc_a in accuracies(out_a, inputs.labels, names).items():
        doc["outputs"][name].update(accuracy_a=acc_a, accuracy_b=result["outputs"][name]["accuracy"])
    several = len(names) > 1
    rows = [{"metric": k, "value": doc[k]} for k in
            ("cosine", "max_abs_error", "top1_agreement", "accuracy_a", "accuracy_b")]
    title = f"{model_b} against {model_a} on {inputs.batch} samples of {inputs.source}"
    tables = [Table(title + (f" (worst of {len(names)} outputs: {result['worst_output']})" if several else ""),
                    [Column("metric", "metric", justify="left"), Column("value", "value", fixed(6))], rows)]
    if several:
        per = [{"output": n, **f} for n, f in doc["outputs"].items()]
        tables.append(Table("per output", [
            Column("output", "output", justify="left"), Column("cosine", "cosine", fixed(6)),
            Column("max_abs_error", "max err", lambda v: "-" if v is None else f"{v:.2e}"),
            Column("top1_agreement", "top-1 agr.", fixed(4)),
            *([Column("accuracy_a", "accuracy a", fixed(4)), Column("accuracy_b", "accuracy b", fixed(4))]
              if any("accuracy_a" in f for f in per) else [])], per))
    emit(doc, tables, fmt)
    if min_cosine is not None and (result["cosine"] is None or result["cosine"] < min_cosine):
        on = f" on output {result['worst_output']!r}" if several else ""
        raise CheckFailed(f"cosine {result['cosine']:.6f}{on} is below --min-cosine {min_cosine}")
