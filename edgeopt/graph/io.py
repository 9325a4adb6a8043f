"""Reading and writing model files: clear errors on bad input, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgeopt.errors import UserError


def load_model(path: str | os.PathLike, what: str = "model") -> onnx.ModelProto:
    """Load an ONNX model, or raise a UserError that names the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an .onnx {what} file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise UserError(
            f"{path}: not a readable ONNX model ({_first_line(exc)}); "
            "is the file complete and really .onnx?"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path}: not an ONNX model (no graph found); is the file really .onnx?")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to path through a temporary file in the same folder, then rename.

    A reader (a build system) either sees the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Serialize and write a model atomically (deterministic: same model, same bytes)."""
    write_atomic(path, model.SerializeToString(deterministic=True))
