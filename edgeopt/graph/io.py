"""Reading and writing model files: clear errors on bad input, atomic writes, external data.

A model whose weights live in an external-data file is read with its data; an
output is written with external data beside it (`out.onnx.data`) when the input
had external data or when inline it would pass protobuf's 2 GiB message limit.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper, numpy_helper

from edgeopt.errors import UserError

# protobuf cannot serialize a message of 2 GiB or more; the estimate below counts tensor data only,
# so keep 256 MiB for everything else (nodes, names, shapes).
INLINE_LIMIT = 2**31 - 2**28
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inline (onnx's own default threshold)
ALIGN = 4096  # page-aligned offsets let onnxruntime map the data file instead of copying it
# Messages that can hold tensors (initializers, Constant values, subgraphs, functions).
_CONTAINERS = {"ModelProto", "GraphProto", "NodeProto", "AttributeProto", "FunctionProto"}
_DATA_FIELDS = {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                "uint64_data", "external_data", "data_location"}
# Sub-byte types pack two values a byte in raw_data but not in numpy: keep them inline unless raw.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(onnx.TensorProto, n)}


class LoadedModel(NamedTuple):
    """A tuple, so a caller unpacks it and keeps no second reference to a model it wants to free."""

    model: onnx.ModelProto
    external_data: bool  # the file kept tensors in external-data files: write the output that way too


def read_model(path: str | os.PathLike, what: str = "model") -> LoadedModel:
    """Load an ONNX model with its external data, or raise a UserError naming the file and problem."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an .onnx {what} file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise UserError(
            f"{path}: not a readable ONNX model ({_first_line(exc)}); "
            "is the file complete and really .onnx?"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path}: not an ONNX model (no graph found); is the file really .onnx?")
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        _check_external(path, tensor)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:
            raise UserError(f"{path}: cannot read its external data ({_first_line(exc)})") from None
        for tensor in external:
            tensor.ClearField("data_location")  # as if stored inline: the same model serializes the same
    return LoadedModel(model, bool(external))


def load_model(path: str | os.PathLike, what: str = "model") -> onnx.ModelProto:
    """Load an ONNX model (with its external data), or raise a UserError that names the file and the problem."""
    return read_model(path, what).model


def _check_external(path: Path, tensor: onnx.TensorProto) -> None:
    """A missing or short data file is bad input: say which file, before onnx reads anything."""
    info = dict((e.key, e.value) for e in tensor.external_data)
    location = info.get("location", "")
    data = path.parent / location
    if not location or not data.is_file():
        raise UserError(f"{path}: external-data file {data} not found (tensor '{tensor.name}'); "
                        "keep the data file beside the model, under the name the model gives")
    size = data.stat().st_size
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size - offset  # no length: up to the end
    except ValueError:
        raise UserError(f"{path}: tensor '{tensor.name}' has a malformed external-data offset or length") from None
    expected = _data_bytes(tensor)
    if offset + length > size or (expected is not None and length < expected):
        raise UserError(f"{path}: external-data file {data} is too short for tensor '{tensor.name}' "
                        f"({size} bytes, the tensor needs {offset + (expected or length)}); is the file complete?")
    if expected is not None and length != expected:
        raise UserError(f"{path}: tensor '{tensor.name}' has {length} bytes of external data, its shape "
                        f"needs {expected}; the data file does not belong to this model")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _tensors(message) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds (initializers, attribute tensors, in subgraphs and functions), in file order."""
    for desc, value in message.ListFields():
        kind = desc.message_type.name if desc.message_type else None
        if kind == "TensorProto":
            yield from (value if desc.is_repeated else [value])
        elif kind in _CONTAINERS:
            for item in value if desc.is_repeated else [value]:
                yield from _tensors(item)


def _elements(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _data_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's data in raw form, from its type and shape (None for strings)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    if tensor.data_type in _PACKED:
        return (_elements(tensor) + 1) // 2
    return _elements(tensor) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """An upper bound of the bytes the tensor's data takes in the serialized model (without reading it)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    if tensor.HasField("raw_data") or tensor.float_data or tensor.double_data:
        return _data_bytes(tensor) or 0
    return _elements(tensor) * 10  # varint-coded fields: up to 10 bytes a value (strings: a guess)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model inline would come near protobuf's 2 GiB limit (it could not be serialized)."""
    return sum(_stored_bytes(t) for t in _tensors(model)) > INLINE_LIMIT


class _TempFile:
    """A temporary file beside `path`, renamed onto it by commit(), removed by discard().

    Created with mode 0666 so the umask decides, like any file a tool creates (mkstemp's is 0600).
    """

    def __init__(self, path: Path, sync: bool = True):
        self.path = path
        self.sync = sync
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.handle = os.fdopen(fd, "wb")

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.flush()
            if self.sync:
                os.fsync(self.handle.fileno())
            self.handle.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to path through a temporary file in the same folder, then rename.

    A reader (a build system) either sees the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _TempFile(path)
    try:
        tmp.handle.write(data)
        tmp.commit()
    except BaseException:
        tmp.discard()
        raise


def data_file_path(path: str | os.PathLike) -> Path:
    """Where the external data of the model written to `path` goes: `out.onnx` -> `out.onnx.data`."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False, *,
               sync: bool = True) -> None:
    """Write a model atomically; deterministic: same model, same bytes. `model` is not changed.

    With external_data, or when the model inline would pass the 2 GiB limit, every tensor of at
    least 1 KiB goes to `data_file_path(path)` and the .onnx refers to it. Both files are written
    to temporary names first and renamed only when both are complete, data file first.
    sync=False skips fsync, for a file nobody keeps (a temporary copy for onnxruntime).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (external_data or needs_external_data(model)):
        write_atomic(path, model.SerializeToString(deterministic=True))
        # an earlier external-data output of the same name would sit beside it, stale and misleading
        data_file_path(path).unlink(missing_ok=True)
        return
    data_path = data_file_path(path)
    data = _TempFile(data_path, sync)
    head = None
    try:
        shell = onnx.ModelProto()
        _copy_placing(model, shell, _DataWriter(data.handle, data_path.name))
        head = _TempFile(path, sync)
        head.handle.write(shell.SerializeToString(deterministic=True))
        del shell
        data.commit()
        head.commit()
    except BaseException:
        data.discard()
        if head is not None:
            head.discard()
        raise


class _HashingHandle:
    """A write-only 'file' that hashes what is written (for model_digest)."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.position += len(data)

    def tell(self) -> int:
        return self.position


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model's content, for models of any size (protobuf cannot serialize 2 GiB or more:
    those hash their tensor data as save_model would stream it, plus the small rest)."""
    if not needs_external_data(model):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    handle = _HashingHandle()
    shell = onnx.ModelProto()
    _copy_placing(model, shell, _DataWriter(handle, "digest"))
    return hashlib.sha256(handle.hash.digest() + shell.SerializeToString(deterministic=True)).hexdigest()


class _DataWriter:
    """Appends tensors to the data file; returns the small tensor that refers to each."""

    def __init__(self, handle, location: str):
        self.handle = handle
        self.location = location

    def __call__(self, tensor: onnx.TensorProto) -> onnx.TensorProto | None:
        if _stored_bytes(tensor) < EXTERNAL_MIN_BYTES or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        if tensor.HasField("raw_data"):
            data = tensor.raw_data
        elif tensor.data_type in _PACKED or tensor.data_type == onnx.TensorProto.STRING:
            return None
        else:
            data = numpy_helper.to_array(tensor).tobytes()  # typed fields -> raw little-endian bytes
        offset = -(-self.handle.tell() // ALIGN) * ALIGN
        self.handle.write(b"\0" * (offset - self.handle.tell()))
        self.handle.write(data)
        ref = onnx.TensorProto()
        for desc in tensor.DESCRIPTOR.fields:  # not ListFields: that would copy raw_data once more
            if desc.name in _DATA_FIELDS or not (desc.is_repeated or tensor.HasField(desc.name)):
                continue
            _copy_field(ref, desc, getattr(tensor, desc.name))
        ref.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
            ref.external_data.add(key=key, value=value)
        return ref


def _copy_placing(source, target, place: Callable[[onnx.TensorProto], onnx.TensorProto | None]) -> None:
    """Copy a message field by field; each tensor is replaced by `place(tensor)` unless that is None.

    Only the messages that can hold tensors are walked; the rest is copied whole.
    """
    for desc, value in source.ListFields():
        kind = desc.message_type.name if desc.message_type else None
        if kind != "TensorProto" and kind not in _CONTAINERS:
            _copy_field(target, desc, value)
            continue
        for item in value if desc.is_repeated else [value]:
            out = getattr(target, desc.name).add() if desc.is_repeated else getattr(target, desc.name)
            if kind == "TensorProto":
                out.CopyFrom(place(item) or item)
            else:
                _copy_placing(item, out, place)
                if not desc.is_repeated and not out.ListFields():
                    out.SetInParent()  # an empty sub-message was still set in the source


def _copy_field(target, desc, value) -> None:
    if desc.is_repeated:
        getattr(target, desc.name).extend(value)
    elif desc.message_type is not None:
        getattr(target, desc.name).CopyFrom(value)
    else:
        setattr(target, desc.name, value)
