"""One self-contained HTML report of a run or a tune study.

    from edgeopt.report.html import load_document, render_html, write_html
    doc = load_document(Path("run.json"))          # UserError (exit 2) for anything but a run / tune doc
    write_html(Path("report.html"), render_html(doc, base=Path(".")))

No script, no external resource: the CSS is inline and the charts are matplotlib figures inlined as
SVG with their text kept as text. Every number a test checks carries `data-key` (its path in the
document) and `data-value` (the document's value as JSON). Same document -> same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeopt.errors import UserError


def document_kind(doc) -> str | None:
    """"run" (has `stages`), "tune" (`kind: tune`), else None."""
    if not isinstance(doc, dict):
        return None
    if doc.get("kind") == "tune":
        return "tune"
    if doc.get("kind") in (None, "run") and isinstance(doc.get("stages"), list):
        return "run"
    return None


def _shape_problem(doc: dict, kind: str) -> str | None:
    if kind == "run":
        if not doc["stages"]:
            return "`stages` is empty"
        for i, s in enumerate(doc["stages"]):
            if not isinstance(s, dict) or "stage" not in s or "pass" not in s:
                return f"stages[{i}] is not a stage (needs `stage` and `pass`)"
        if not isinstance(doc.get("checks", []), list):
            return "`checks` must be a list"
        return None
    if not isinstance(doc.get("objectives"), list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in doc["objectives"]):
        return "`objectives` must be a list of {name, direction}"
    if not isinstance(doc.get("trials"), list):
        return "`trials` must be a list"
    for i, t in enumerate(doc["trials"]):
        if not isinstance(t, dict) or "number" not in t:
            return f"trials[{i}] is not a trial (needs `number`)"
        if t.get("values") is not None and not isinstance(t["values"], dict):
            return f"trials[{i}].values must be a mapping objective -> value or null"
    return None


def check_document(doc, where: str) -> str:
    """The document's kind; a UserError naming `where` when it is neither a run nor a tune document."""
    kind = document_kind(doc)
    if kind is None:
        found = f"kind {doc.get('kind')!r}" if isinstance(doc, dict) and "kind" in doc else (
            "no `stages`" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}")
        raise UserError(f"{where}: not an edgeopt run or tune document ({found}); pass the JSON that "
                        "`edgeopt run --format json` or `edgeopt tune --format json` printed")
    problem = _shape_problem(doc, kind)
    if problem:
        raise UserError(f"{where}: malformed {kind} document: {problem}")
    return kind


def load_document(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: no such file; pass the JSON that `edgeopt run --format json` "
                        "or `edgeopt tune --format json` printed")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass a run or tune JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({' '.join(str(exc).split())})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); pass the "
                        "output of `edgeopt run --format json` or `edgeopt tune --format json`") from None
    check_document(doc, str(path))
    return doc


def render_html(doc: dict, base: Path | None = None, top: int = 5, source: str | None = None) -> str:
    """The report page. `base`: the folder relative paths in the document are tried against too
    (the JSON's folder); `top`: how many of the slowest layers the roofline numbers."""
    kind = check_document(doc, source or "document")
    try:
        if kind == "tune":
            from edgeopt.report.html.tune import render_tune

            return render_tune(doc, base, top, source)
        from edgeopt.report.html.run import render_run

        return render_run(doc, base, top, source)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if os.environ.get("EDGEOPT_DEBUG"):
            raise
        raise UserError(f"{source or 'document'}: malformed {kind} document "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def write_html(path: Path, text: str) -> None:
    """Atomically (temporary file in the same folder, then rename)."""
    from edgeopt.graph.io import write_atomic

    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the report's file name, e.g. {path / 'report.html'}")
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot write the report ({' '.join(str(exc).split())})") from None
