"""Click options shared by several commands, defined once (DESIGN.md: common options)."""

from __future__ import annotations

import sys

import click

from edgeopt import progress
from edgeopt.errors import UserError
from edgeopt.graph.shapes import parse_shape_spec
from edgeopt.report import FORMATS


def format_option(func):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Output format; json/csv/markdown are for scripts and reports.",
    )(func)


def device_option(multiple: bool = False, default: str | None = None):
    def decorator(func):
        return click.option(
            "--device", "device", multiple=multiple, default=default,
            help="A built-in device profile name (see `edgeopt devices`) or a path to a device YAML.",
        )(func)

    return decorator


def _parse_shapes(ctx, param, values) -> dict[str, list[int]]:
    shapes = {}
    for spec in values:
        try:
            name, shape = parse_shape_spec(spec)
        except UserError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
        shapes[name] = shape
    return shapes


def input_shape_option(func):
    return click.option(
        "--input-shape", "input_shapes", multiple=True, callback=_parse_shapes, metavar="NAME=DIMS",
        help="Fix a dynamic input shape, e.g. input=1x3x224x224 (repeatable).",
    )(func)


def _quiet(ctx, param, value: bool) -> bool:
    progress.enable(not value)  # progress bars in libraries (edgeopt.progress) follow --quiet too
    return value


def quiet_option(func):
    return click.option("--quiet", "-q", is_flag=True, callback=_quiet,
                        help="No progress bars or warnings on stderr.")(func)


class Progress:
    """Progress and warnings on stderr (never stdout, so JSON output stays clean)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"edgeopt: warning: {message}", err=True)

    @property
    def interactive(self) -> bool:
        return not self.quiet and sys.stderr.isatty()
