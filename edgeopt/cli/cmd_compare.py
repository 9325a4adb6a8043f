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
from edgeopt.verify.fidelity import accuracy, compare
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
@click.option("--min-cosine", type=float, help="Exit 1 if the cosine similarity is below this.")
@input_shape_option
@format_option
@quiet_option
def command(model_a, model_b, data, seed, min_cosine, input_shapes, fmt, quiet):
    """Fidelity of MODEL_B against MODEL_A: cosine, max abs error, top-1 agreement, accuracy."""
    a, b = load_model(model_a), load_model(model_b)
    a_inputs = {i.name for i in a.graph.input} - {i.name for i in a.graph.initializer}
    b_inputs = {i.name for i in b.graph.input} - {i.name for i in b.graph.initializer}
    if a_inputs != b_inputs:
        raise UserError(f"{model_b}: its inputs {sorted(b_inputs)} differ from {model_a}'s {sorted(a_inputs)}; "
                        "compare models with the same inputs")
    inputs = load_data(data, a) if data else random_inputs(a, resolve_input_shapes(a, input_shapes), seed)
    out_a, out_b = _outputs(model_a, a, inputs), _outputs(model_b, b, inputs)
    result = compare(out_a, out_b)
    if "problem" in result:
        raise UserError(f"{model_b}: cannot compare with {model_a}: {result['problem']}")
    doc = {"a": str(model_a), "b": str(model_b), "data": inputs.source, "samples": inputs.batch, **result,
           "accuracy_a": accuracy(out_a, inputs.labels), "accuracy_b": accuracy(out_b, inputs.labels)}
    rows = [{"metric": k, "value": doc[k]} for k in
            ("cosine", "max_abs_error", "top1_agreement", "accuracy_a", "accuracy_b")]
    emit(doc, [Table(f"{model_b} against {model_a} on {inputs.batch} samples of {inputs.source}",
                     [Column("metric", "metric", justify="left"), Column("value", "value", fixed(6))], rows)], fmt)
    if min_cosine is not None and (result["cosine"] is None or result["cosine"] < min_cosine):
        raise CheckFailed(f"cosine {result['cosine']:.6f} is below --min-cosine {min_cosine}")
