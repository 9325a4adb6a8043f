"""Progress bars for long work (a codebook fit, a sensitivity scan, split fitting, tune trials).

A library marks its loop with `steps(...)`; a bar appears on stderr only when stderr is a terminal and
the command was not given --quiet (`enable(False)`). Otherwise it costs nothing and prints nothing, so
logs, pipes and JSON stay clean. Nested bars show as extra lines of one live display.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

_enabled = True
_live = None  # the rich Progress shown now, shared by nested bars
_depth = 0


def enable(on: bool) -> None:
    """The CLI turns bars off for --quiet."""
    global _enabled
    _enabled = on


def shown() -> bool:
    return _enabled and sys.stderr.isatty()


@contextmanager
def steps(label: str, total: int | None) -> Iterator[Callable[..., None]]:
    """`with steps("fitting codebooks", n) as advance: ... advance()` (advance(k) for k steps,
    advance(description=...) to change the label)."""
    global _live, _depth
    if not shown():
        yield lambda *args, **kwargs: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if _live is None:
        _live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        _live.start()
    live = _live
    task = live.add_task(label, total=total)
    _depth += 1

    def advance(k: int = 1, description: str | None = None) -> None:
        live.update(task, advance=k, **({"description": description} if description else {}))

    try:
        yield advance
    finally:
        live.remove_task(task)
        _depth -= 1
        if _depth == 0:
            live.stop()
            _live = None


def tracked(items, label: str):
    """Iterate `items` with a bar (`for slot in tracked(slots, "quantizing weights"):`)."""
    items = list(items)
    with steps(label, len(items)) as advance:
        for item in items:
            yield item
            advance()
