"""A content-addressed cache of pass results, so `tune` never repeats a pass it has done.

A stage's key is a hash of everything its model depends on: the input model's bytes and fixed dims,
the calibration data, the seed and first device, then each pass's name and parameters in order.
Two trials that share a prefix of passes with the same parameters share the prefix's keys, and the
second one reads the stored result instead of running the pass. Verification and profiling still
run on every stage (they are what a trial measures); only the pass's own work is saved.

Entries are written atomically (model, then its metadata last), so workers that share one folder
never read half an entry; a damaged entry reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import onnx

from edgeopt.errors import UserError
from edgeopt.graph.io import model_digest, read_model, save_model
from edgeopt.pass_types import NodeNote, PassResult


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray] | None, labels: np.ndarray | None = None) -> bytes:
    """Bytes that identify a set of named arrays (calibration data and labels)."""
    if arrays is None:
        return b"none"
    h = hashlib.sha256()
    items = sorted(arrays.items()) + ([("labels", labels)] if labels is not None else [])
    for name, array in items:
        a = np.ascontiguousarray(array)
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()


def first_key(model: onnx.ModelProto, context: dict) -> str:
    """The key of the input stage: the model after its dims were fixed, plus what every pass sees."""
    return _digest(model_digest(model).encode(), json.dumps(context, sort_keys=True, default=str).encode())


def next_key(prev: str, pass_name: str, raw_params: dict) -> str:
    """The key of the stage a pass makes from the stage keyed `prev`."""
    return _digest(prev.encode(), pass_name.encode(), json.dumps(raw_params, sort_keys=True, default=str).encode())


class StageCache:
    """Pass results on disk under `root`, keyed by stage key; counts its hits and misses."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.onnx", folder / f"{key}.json"

    def get(self, key: str) -> PassResult | None:
        model_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            result = PassResult(model=read_model(model_path, "cached stage").model, modified=meta["modified"],
                                notes=[NodeNote(**n) for n in meta["notes"]], summary=meta["summary"],
                                folded_macs=meta["folded_macs"])
        except (OSError, ValueError, KeyError, TypeError, UserError):
            self.misses += 1
            return None
        self.hits += 1
        return result

    def put(self, key: str, result: PassResult) -> None:
        model_path, meta_path = self._paths(key)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        save_model(result.model, model_path, sync=False)
        meta = {"modified": result.modified, "summary": result.summary, "folded_macs": result.folded_macs,
                "notes": [_note_dict(n) for n in result.notes]}
        tmp = meta_path.with_name(f".{meta_path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)  # the metadata lands last: its presence means the entry is whole


def _note_dict(note: NodeNote) -> dict:
    return {"node": note.node, "op_type": note.op_type, "action": note.action, "reason": note.reason,
            "figures": note.figures}
