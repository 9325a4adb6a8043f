"""The `edgeopt` command group. Commands live one per file in edgeopt/cli/cmd_*.py."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from edgeopt import __version__
from edgeopt.errors import EdgeoptError


class EdgeoptGroup(click.Group):
    """Commands load lazily from edgeopt/cli/cmd_<name>.py (startup stays fast); an
    EdgeoptError becomes its exit code and one line on stderr, no traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        import edgeopt.cli as package

        return sorted(m.name[4:] for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("cmd_"))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        return importlib.import_module(f"edgeopt.cli.cmd_{name}").command

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


def main() -> None:
    cli(prog_name="edgeopt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
