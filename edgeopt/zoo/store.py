"""Zoo models on disk: `<dir>/<name>.onnx`, written atomically and built only when missing."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import onnx

DEFAULT_DIR = Path("build/models")


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write model to path via a temporary file in the same folder and a rename.

    A reader never sees half a file; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # the usual umask permissions, unlike mkstemp's 0600
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def model_path(name: str, out_dir: str | os.PathLike = DEFAULT_DIR) -> Path:
    return Path(out_dir) / f"{name}.onnx"


def ensure_model(name: str, out_dir: str | os.PathLike = DEFAULT_DIR, force: bool = False) -> Path:
    """Path of zoo model `name` in out_dir, building and writing it first if absent (or if force)."""
    from edgeopt.zoo import BUILDERS

    if name not in BUILDERS:
        raise KeyError(f"unknown zoo model '{name}'; known: {', '.join(BUILDERS)}")
    path = model_path(name, out_dir)
    if force or not path.exists():
        save_model_atomic(BUILDERS[name](), path)
    return path
