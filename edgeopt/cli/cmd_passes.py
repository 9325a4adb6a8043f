"""`edgeopt passes [NAME]`: the passes, or one pass with its parameters."""

from __future__ import annotations

import click

from edgeopt.cli.options import format_option
from edgeopt.errors import UserError
from edgeopt.passes import all_passes
from edgeopt.recipe.values import describe_params, did_you_mean
from edgeopt.report import Column, Table, emit


@click.command("passes")
@click.argument("name", required=False)
@format_option
def command(name, fmt):
    """List the passes, or show one pass with its parameters, types, defaults and help."""
    registry = all_passes()
    if name is None:
        rows = [{"name": n, "lossless": cls.lossless, "summary": cls.summary} for n, cls in registry.items()]
        table = Table("passes", [Column("name", "pass", justify="left"), Column("lossless", "lossless"),
                                 Column("summary", "summary", justify="left", wrap=True)], rows)
        emit({"passes": rows}, [table], fmt)
        return
    if name not in registry:
        raise UserError(f"unknown pass {name!r}{did_you_mean(name, registry)} (list them with `edgeopt passes`)")
    cls = registry[name]
    params = describe_params(cls.Params)
    doc = {"name": name, "summary": cls.summary, "description": cls.description.strip(),
           "lossless": cls.lossless, "params": params}
    table = Table(
        f"{name}: {cls.summary}",
        [Column("name", "parameter", justify="left"), Column("type", "type", justify="left", wrap=True),
         Column("default", "default", justify="left"), Column("bounds", "bounds", justify="left"),
         Column("help", "help", justify="left", wrap=True)],
        params,
        footer=[cls.description.strip()] if cls.description else [],
    )
    emit(doc, [table], fmt)
