"""python -m edgeopt.zoo [--out DIR] [--force] [NAME...]: write zoo models as DIR/NAME.onnx.

Models already present are kept unless --force. One line per model goes to
stdout; progress goes to stderr.
"""

from __future__ import annotations

import sys
import time

import click

from edgeopt.zoo import BUILDERS
from edgeopt.zoo.store import DEFAULT_DIR, model_path, save_model_atomic


@click.command(help=f"""Build zoo models with random weights and write them as OUT/NAME.onnx.

    NAME is one of: {", ".join(BUILDERS)} (default: all).""")
@click.argument("names", nargs=-1, metavar="[NAME]...", type=click.Choice(list(BUILDERS)))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(DEFAULT_DIR),
              show_default=True, help="Folder to write NAME.onnx into.")
@click.option("--force", is_flag=True, help="Rebuild models that already exist.")
def main(names: tuple[str, ...], out_dir: str, force: bool) -> None:
    for name in names or tuple(BUILDERS):
        path = model_path(name, out_dir)
        if path.exists() and not force:
            click.echo(f"kept  {path} (exists; --force rebuilds it)")
            continue
        click.echo(f"building {name} ...", err=True)
        start = time.perf_counter()
        model = BUILDERS[name]()
        props = {p.key: p.value for p in model.metadata_props}
        save_model_atomic(model, path)
        seconds = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        click.echo(f"wrote {path} ({size_mb:.1f} MB, {int(props['zoo.params']):,} params, "
                   f"{int(props['zoo.macs']) / 1e9:.2f} G MACs, {seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main(prog_name="python -m edgeopt.zoo"))
