"""The pass registry. Each pass lives in edgeopt/passes/<name>.py and registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from edgeopt.passes.base import NodeNote, Pass, PassContext, PassResult, param

_REGISTRY: dict[str, type[Pass]] = {}
_LOADED = False


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass to the registry under its `name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two passes named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def all_passes() -> dict[str, type[Pass]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass] | None:
    return all_passes().get(name)


__all__ = ["NodeNote", "Pass", "PassContext", "PassResult", "param", "register", "all_passes", "get_pass"]
