"""The pass registry. Each pass lives in edgeopt/passes/<name>.py and registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from edgeopt.passes.base import NodeNote, Pass, PassContext, PassResult, Rewrite, param

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


def pass_names() -> list[str]:
    """Every pass name, without importing the pass modules (a pass's file is named after it)."""
    modules = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "base"}
    return sorted(modules | set(_REGISTRY))


def get_pass(name: str) -> type[Pass] | None:
    """The pass class, importing only its own module (a run loads just the passes it uses)."""
    if name not in _REGISTRY and name in pass_names():
        importlib.import_module(f"{__name__}.{name}")
    return _REGISTRY.get(name)


def helper(name: str) -> Rewrite:
    """A pass at its defaults as a helper rewrite for a library (quant's fold-BatchNorm-first step)."""
    def run(model, ctx):
        cls = get_pass(name)
        result = cls().apply(model, cls.Params(), ctx)
        return result.model, name if result.modified else ""

    run.__name__ = name
    return run


__all__ = ["helper", "NodeNote", "Pass", "PassContext", "PassResult", "param", "register", "all_passes", "get_pass", "pass_names"]
