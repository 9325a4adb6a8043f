"""The `edgeopt` command group. Commands live one per file in edgeopt/cli/cmd_*.py."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from edgeopt import __version__
from edgeopt.errors import EdgeoptError


class EdgeoptGroup(click.Group):
    """Turns EdgeoptError into its exit code and one line on stderr, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeoptError as exc:
            click.echo(f"edgeopt: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeopt: interrupted; nothing was written", err=True)
            ctx.exit(130)


@click.group(cls=EdgeoptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
def cli() -> None:
    """Make ONNX models smaller and faster for edge devices, and know what they cost there."""


def _register_commands() -> None:
    import edgeopt.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"edgeopt.cli.{info.name}")
            cli.add_command(module.command)


_register_commands()


def main() -> None:
    cli(prog_name="edgeopt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
