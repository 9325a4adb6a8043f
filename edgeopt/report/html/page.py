"""HTML building blocks: escaped text, numbers that carry their JSON value, tables, the page shell.

A number a reader can check against the JSON is a cell with `data-key` (its path in the document,
dot-separated: `stages.3.devices.rpi3.est_latency_ms`) and `data-value` (the value as JSON text, so
a test reads back exactly what the document holds); the cell shows it formatted.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Callable

from edgeopt.report.html.style import CLASS_COLORS, CLASS_LABELS, CSS, OP_CLASSES


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def json_value(value: Any) -> str:
    """The value as JSON text (floats as Python's shortest round-trip repr, like the JSON output)."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return json.dumps(value, sort_keys=True)


def attrs(**items: Any) -> str:
    """HTML attributes; a name's underscores become dashes (data_key -> data-key); None is left out."""
    out = []
    for name, value in items.items():
        if value is None:
            continue
        name = name.rstrip("_").replace("_", "-")
        out.append(f'{name}="{esc(value)}"')
    return (" " + " ".join(out)) if out else ""


def num(value: Any, text: str, key: str | None = None, cls: str = "num", tag: str = "td", title: bool = True,
        **extra: Any) -> str:
    """A number shown as `text`; with `key`, it carries its JSON path and exact value."""
    exact = json_value(value)
    return (f"<{tag}{attrs(class_=cls, data_key=key, data_value=exact, **extra)}"
            f"{attrs(title=exact) if title and value is not None else ''}>{esc(text)}</{tag}>")


@dataclass
class Col:
    header: str
    cell: Callable[[Any, int], str]  # (row, index) -> a whole <td>...</td>
    numeric: bool = True
    title: str | None = None  # the header's tooltip


def table(cols: list[Col], rows: list, cls: str = "", id_: str | None = None,
          row_class: Callable[[Any], str | None] | None = None) -> str:
    head = "".join(f"<th{attrs(class_='num' if c.numeric else None, title=c.title)}>{esc(c.header)}</th>"
                   for c in cols)
    body = []
    for i, row in enumerate(rows):
        rc = row_class(row) if row_class else None
        body.append(f"<tr{attrs(class_=rc)}>" + "".join(c.cell(row, i) for c in cols) + "</tr>")
    return (f'<div class="scroll"><table{attrs(class_=cls or None, id=id_)}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def text_cell(text: Any, cls: str | None = None) -> str:
    return f"<td{attrs(class_=cls)}>{esc(text)}</td>"


def figure(svg: str, caption: str, id_: str) -> str:
    return f'<figure class="chart"{attrs(id=id_)}>{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def class_legend(classes: list[str] | None = None) -> str:
    items = "".join(f'<span><span class="swatch" style="background:{CLASS_COLORS[c]}"></span>{esc(CLASS_LABELS[c])}'
                    f"</span>" for c in (classes or OP_CLASSES))
    return f'<div class="legend">{items}</div>'


def section(id_: str, title: str, lead: str, body: str) -> str:
    lead_html = f'<p class="lead">{esc(lead)}</p>' if lead else ""
    return f'<section{attrs(id=id_)}><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def note(text: str, cls: str = "note") -> str:
    return f'<p{attrs(class_=cls)}>{esc(text)}</p>'


def document(title: str, header: str, sections: list[str], footer: str, kind: str) -> str:
    """The whole page: no script, no external resource; the CSS and the SVG charts are inline."""
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="edgeopt report">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f'<body data-kind="{esc(kind)}"><main>\n<header>{header}</header>\n'
            + "\n".join(sections)
            + f"\n<footer>{footer}</footer></main></body></html>\n")


_MISSING = object()


def resolve_key(doc: Any, key: str) -> Any:
    """The value a `data-key` names: dot-separated mapping keys and list indices; a mapping key that
    itself holds dots (a device file name) is matched whole first. KeyError when there is none."""
    parts = key.split(".")

    def walk(node, i):
        if i == len(parts):
            return node
        if isinstance(node, list):
            try:
                return walk(node[int(parts[i])], i + 1)
            except (ValueError, IndexError):
                return _MISSING
        if isinstance(node, dict):
            for j in range(len(parts), i, -1):  # longest key first
                name = ".".join(parts[i:j])
                if name in node:
                    found = walk(node[name], j)
                    if found is not _MISSING:
                        return found
        return _MISSING

    value = walk(doc, 0)
    if value is _MISSING:
        raise KeyError(key)
    return value
