"""Measured latencies to fit and validate profiles against: the published table, or a user's own CSV.

A row names its model either by path (`model`, an ONNX file) or by architecture and resolution
(`arch`, `res` as 224 or 224x224, found as ARCH_RES.onnx in a models folder), plus `latency_ms`.
Optional columns say what it ran on (`device_key`, `runtime_key`, `precision_key`, `threads_n`,
the vocabulary of bench/device_truth/published.csv) and where the figure comes from (`source_url`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edgeopt.devices.model import Device
from edgeopt.errors import UserError

TRUTH_CSV = Path(__file__).resolve().parents[2] / "bench" / "device_truth" / "published.csv"


@dataclass(frozen=True)
class Measurement:
    latency_ms: float
    model: str | None = None  # path of an ONNX file
    arch: str | None = None
    res: int | None = None
    device_key: str = ""
    runtime: str = ""
    precision: str = ""
    threads: int | None = None
    source: str = ""
    line: int = 0

    @property
    def key(self) -> str:
        """The architecture a leave-one-out holds out: arch, else the model file's stem."""
        return self.arch or Path(self.model or "?").stem

    def label(self) -> str:
        return f"{self.arch}@{self.res}" if self.arch else Path(self.model or "?").name


def _res(text: str) -> int | None:
    text = (text or "").strip().lower()
    if not text:
        return None
    try:
        return int(text.split("x")[0])
    except ValueError:
        return None


def read_measurements(path: Path | str) -> list[Measurement]:
    """Rows of a measurements CSV; a bad file or row is one UserError naming the line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: measurements file not found")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or [])
            if "latency_ms" not in fields or not ({"model", "arch"} & fields):
                raise UserError(f"{path}: needs a latency_ms column and a model (ONNX path) or arch (+ res) column")
            rows = []
            for n, raw in enumerate(reader, start=2):
                rows.append(_row(raw, path, n))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read measurements ({exc})") from None
    return rows


def _row(raw: dict, path: Path, line: int) -> Measurement:
    try:
        latency = float(raw.get("latency_ms") or "")
    except ValueError:
        raise UserError(f"{path}:{line}: latency_ms {raw.get('latency_ms')!r} is not a number") from None
    if latency <= 0:
        raise UserError(f"{path}:{line}: latency_ms must be > 0")
    threads = (raw.get("threads_n") or raw.get("threads") or "").strip()
    model = (raw.get("model") or "").strip()
    arch = (raw.get("arch") or "").strip()
    if model and not model.endswith(".onnx"):
        model = ""  # the published table's `model` is the source's wording, not a file
    if model and not Path(model).is_absolute():
        model = str((path.parent / model).resolve())
    return Measurement(
        latency_ms=latency, model=model or None, arch=arch or None,
        res=_res(raw.get("res", "")) or (224 if arch else None),
        device_key=(raw.get("device_key") or "").strip(), runtime=(raw.get("runtime_key") or "").strip(),
        precision=(raw.get("precision_key") or raw.get("precision") or "").strip(),
        threads=int(threads) if threads.isdigit() else None, source=(raw.get("source_url") or "").strip(),
        line=line)


def usable(rows: list[Measurement]) -> list[Measurement]:
    """Rows with a model to profile: a file, or an architecture."""
    return [r for r in rows if r.model or r.arch]


def matches(device: Device, row: Measurement) -> bool:
    """Whether a row was measured on what the profile models (rows that do not say match any)."""
    if row.device_key and device.device_key and row.device_key != device.device_key:
        return False
    if row.runtime and device.runtime and row.runtime != device.runtime:
        return False
    if row.precision and row.precision not in device.precisions:
        return False
    if device.threads is not None and row.threads is not None and row.threads != device.threads:
        return False
    if device.threads is None and row.threads is not None and device.kind == "cpu":
        return False  # a thread count the profile does not model
    if device.threads == 1 and row.threads is None and device.kind == "cpu":
        return False  # a source that does not say ran the runtime's default: all cores
    return True


def model_path(row: Measurement, models_dir: Path | str) -> Path:
    """The ONNX file a row names; UserError when it is missing."""
    if row.model:
        path = Path(row.model)
    else:
        path = Path(models_dir) / f"{row.arch}_{row.res}.onnx"
    if not path.exists():
        hint = " (export the architectures with `make device-exports`)" if row.arch else ""
        raise UserError(f"line {row.line}: model {path} not found{hint}")
    return path
