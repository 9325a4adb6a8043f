"""Which nodes a user excluded: by exact name, glob on the name, or op type."""

from __future__ import annotations

import fnmatch


def excluded(name: str, op_type: str, patterns: list[str]) -> str | None:
    """The pattern that excludes this node, or None."""
    for pattern in patterns:
        if pattern == op_type or pattern == name or (name and fnmatch.fnmatchcase(name, pattern)):
            return pattern
    return None


def node_label(node) -> str:
    """A node's name, or for an unnamed node the name of its first output (what a user can find)."""
    if node.name:
        return node.name
    outputs = [v.name for v in node.outputs if v is not None and v.name]
    return f"<{outputs[0]}>" if outputs else f"<{node.op_type}>"

