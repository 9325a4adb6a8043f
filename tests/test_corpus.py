"""Every pass and the profiler on real third-party exports (the corpus from `make corpus`).

Each cell runs `edgeopt run` on one corpus model with one pass at its defaults,
after the lossless simplify + fold_batchnorm, on the model's rendered inputs.
It must end as exit 0 with an output that loads and computes in onnxruntime,
or exit 2 with one line saying why the pass does not apply. Exit 3, exit 1, a
traceback, or an output that does not run fails. A missing corpus fails too
(`make test` fetches it first): never a skip that passes green.

On every model with several outputs the stage's fidelity is per output: one
entry per graph output, the worst one named, its cosine the reported one. On
the two trained here (sample_models/ssd_digits, onet_faces: score maps near 1
next to box maps in the tens) the per-output cosines are recomputed here, and
a lossy pass that a pooled cosine would pass is seen at its worst output.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from edgeopt.cli.main import cli
from edgeopt.passes import pass_names
from edgeopt.zoo.corpus import BY_KEY, MODELS, data_path, model_path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "build" / "corpus"
LOSSLESS_CHAIN = ["simplify", "fold_batchnorm", "fuse_relu6"]
PREFIX = ["simplify", "fold_batchnorm"]

pytestmark = pytest.mark.corpus


def _paths(model):
    onnx_path, data = model_path(model, CACHE), data_path(model, CACHE)
    if not onnx_path.exists() or not data.exists():
        pytest.fail(f"corpus model {model.key} missing ({onnx_path}); run `make corpus` (make test does)")
    return onnx_path, data


def _run(tmp: Path, model_file: Path, data: Path, passes: list, *extra: str):
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(model_file), "output": str(tmp / "out.onnx"),
                                      "device": ["myriadx", "rpi3"], "data": str(data), "passes": passes}))
    result = CliRunner().invoke(cli, ["run", str(recipe), "--format", "json", "--quiet", "--no-measure", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        pytest.fail("traceback:\n" + "".join(traceback.format_exception(result.exception)))
    return result


def _names(path: Path) -> list[str]:
    return [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _per_output_figures(fidelity: dict, names: list[str]) -> None:
    """A stage's fidelity with several outputs: every graph output's figures, the worst named, its cosine."""
    assert set(fidelity["outputs"]) == set(names), (sorted(fidelity["outputs"]), names)
    cosines = {n: f["cosine"] for n, f in fidelity["outputs"].items() if f["cosine"] is not None}
    if cosines and fidelity.get("cosine") is not None:
        assert fidelity["worst_output"] in names
        assert fidelity["cosine"] == min(cosines.values())
        assert cosines[fidelity["worst_output"]] == fidelity["cosine"]


def _outputs(path: Path, data: Path) -> list[np.ndarray]:
    from edgeopt.graph.io import load_model
    from edgeopt.verify.inputs import load_data
    from edgeopt.verify.runtime import run_batched

    model = load_model(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return run_batched(session, model, load_data(data, model).feeds)


_PREPARED: dict[str, Path] = {}


def _prepared(model, tmp_factory) -> Path:
    """The model after the lossless prefix (simplify + fold_batchnorm), made once per session."""
    if model.key not in _PREPARED:
        onnx_path, data = _paths(model)
        tmp = tmp_factory.mktemp(f"{model.key}_prefix")
        result = _run(tmp, onnx_path, data, PREFIX)
        assert result.exit_code == 0, f"lossless prefix on {model.key}: {result.stderr}"
        _PREPARED[model.key] = tmp / "out.onnx"
    return _PREPARED[model.key]


def _grouped(cells, key, marks=lambda cell: []):
    """One xdist group per corpus model (make test: --dist loadgroup), so its lossless prefix is run once."""
    return [pytest.param(*cell, marks=[pytest.mark.xdist_group(key(cell)), *marks(cell)], id=ident)
            for cell, ident in cells]


@pytest.mark.parametrize("model", _grouped([((m,), m.key) for m in MODELS], lambda c: c[0].key))
def test_lossless_chain_keeps_outputs_and_macs(model, tmp_path):
    onnx_path, data = _paths(model)
    result = _run(tmp_path, onnx_path, data, LOSSLESS_CHAIN)
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    first = stages[0]
    for stage in stages:
        # complete profiles: every estimate is a number on every device, at every stage
        for key in ("macs", "est_latency_ms", "est_energy_mj", "peak_activation_bytes"):
            assert stage[key] is not None, f"{stage['pass']}: {key} is null"
        assert all(v["est_latency_ms"] is not None for v in stage["devices"].values())
        assert stage["macs"] == pytest.approx(first["macs"], rel=1e-6), stage["pass"]
    # the pipeline held each stage to the lossless tolerance; the written model computes the same here too
    before, after = _outputs(onnx_path, data), _outputs(tmp_path / "out.onnx", data)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        scale = max(float(np.abs(a).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 4e-3 * scale


CELLS = [(m, p) for m in MODELS for p in pass_names() if p not in PREFIX]

# The cells that take 10-60 s each on 2 cores (pytest --durations): static int8 everywhere (it calibrates and
# times trial sessions), and on the three largest exports the passes that run the model many times or rewrite
# every conv. They run in `make test-heavy`, which CI runs after `make test`, so make test keeps under its
# 10 minutes with every model and every other pass still in it.
HEAVY_MODELS = {"yolov8n", "ppocr_rec", "ppocr_det"}
HEAVY_PASSES = {"quantize_static", "quantize_codebook", "split_spatial", "split_depthwise", "convert_fp16",
                "equalize"}


def _cell_marks(cell):
    model, pass_name = cell
    heavy = pass_name == "quantize_static" or (model.key in HEAVY_MODELS and pass_name in HEAVY_PASSES)
    return [pytest.mark.heavy] if heavy else []


@pytest.mark.parametrize("model,pass_name", _grouped([(c, f"{c[0].key}-{c[1]}") for c in CELLS],
                                                     lambda c: c[0].key, _cell_marks))
def test_pass_on_real_export(model, pass_name, tmp_path, tmp_path_factory):
    prepared = _prepared(model, tmp_path_factory)
    _, data = _paths(model)
    result = _run(tmp_path, prepared, data, [pass_name])
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeopt: error:"), result.stderr
        return
    assert result.exit_code == 0, result.stderr
    stage = json.loads(result.stdout)["stages"][-1]
    assert stage["est_latency_ms"] is not None and stage["macs"] is not None
    reference, outputs = _outputs(prepared, data), _outputs(tmp_path / "out.onnx", data)
    assert [o.shape for o in outputs] == [r.shape for r in reference]
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")
    # with data: no random-input warning, and a stage whose worst output falls below cosine 0.9 says so
    warnings = stage.get("warnings") or []
    assert not any("seeded random inputs" in w for w in warnings), warnings
    worst = (stage["fidelity"].get("vs_input") or {}).get("cosine")
    if worst is not None and worst < 0.9:
        assert any("against the input model" in w and "below 0.9" in w for w in warnings), warnings
    names = _names(prepared)
    if len(names) > 1:
        for fidelity in (stage["fidelity"], stage["fidelity"]["vs_input"]):
            _per_output_figures(fidelity, names)
    if model.committed:  # trained here: every output's cosine, by onnxruntime here, is the one reported
        reported = {n: f["cosine"] for n, f in stage["fidelity"]["vs_input"]["outputs"].items()}
        assert reported == pytest.approx({n: _cos(r, o) for n, r, o in zip(names, reference, outputs)}, abs=1e-4)


# A lossy pass that one cosine over every output concatenated would pass (the large box maps dominate it),
# seen at the small-norm output it hurts. Weight-only quantization and magnitude sparsity compute in float:
# the figures are float32 rounding apart on any CPU, and the gaps (0.96 pooled vs 0.80 on score_p3; 0.98 vs
# 0.86 on O-Net's box offsets) are far wider than that.
HIDDEN = [("ssd_digits", {"quantize_weights": {"bits": 4}}, ("score_p3", "score_p4")),
          ("onet_faces", "sparsify", ("box",))]


@pytest.mark.parametrize("key,spec,small", _grouped([(c, c[0]) for c in HIDDEN], lambda c: c[0]))
def test_a_pooled_cosine_hides_the_worst_output(key, spec, small, tmp_path, tmp_path_factory):
    model = BY_KEY[key]
    prepared = _prepared(model, tmp_path_factory)
    _, data = _paths(model)
    result = _run(tmp_path, prepared, data, [spec])
    assert result.exit_code == 0, result.stderr
    fidelity = json.loads(result.stdout)["stages"][-1]["fidelity"]["vs_input"]
    names = _names(prepared)
    reference, outputs = _outputs(prepared, data), _outputs(tmp_path / "out.onnx", data)
    per = {n: _cos(r, o) for n, r, o in zip(names, reference, outputs)}
    pooled = _cos(np.concatenate([r.ravel() for r in reference]), np.concatenate([o.ravel() for o in outputs]))
    _per_output_figures(fidelity, names)
    assert {n: f["cosine"] for n, f in fidelity["outputs"].items()} == pytest.approx(per, abs=1e-4)
    assert fidelity["worst_output"] == min(per, key=per.get) and fidelity["worst_output"] in small
    assert pooled - fidelity["cosine"] > 0.05, (pooled, per)  # one pooled cosine would have said this much more


# quantize_static on PP-OCRv4 det at the 640x640 it runs at, in a child process under an address-space limit,
# so a regression fails here instead of taking the machine down. The old calibration ran the whole
# calibration batch in one onnxruntime run and kept its activations: with 4 samples it failed to allocate
# under 3 GB (and grew past 24 GB with the defaults). Bounded, it fits in under 2 GB. The limit allows
# each thread of onnxruntime's pools its stack; glibc keeps two malloc arenas (their reserved address space
# grows with the core count otherwise).
MEMORY_LIMIT = int(2.5e9) + 16 * 2**20 * (os.cpu_count() or 1)
DET_SIZE, DET_CALIBRATION, DET_DATA = 640, 4, 2


def _limited(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


@pytest.mark.heavy
@pytest.mark.xdist_group("ppocr_det")
def test_quantize_static_on_ppocr_det_at_640_fits_a_memory_limit(tmp_path):
    from edgeopt.zoo.corpus import BY_KEY
    from edgeopt.zoo.corpus_inputs import ocr_page

    onnx_path, _ = _paths(BY_KEY["ppocr_det"])
    pages = ocr_page(DET_CALIBRATION + DET_DATA, DET_SIZE, seed=11)
    np.savez(tmp_path / "calibration.npz", x=pages[:DET_CALIBRATION])
    np.savez(tmp_path / "data.npz", x=pages[DET_CALIBRATION:])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(onnx_path), "output": str(tmp_path / "out.onnx"), "device": ["host"],
        "data": "data.npz", "calibration_data": "calibration.npz",
        "passes": [{"quantize_static": {"mode": "all", "samples": DET_CALIBRATION}}]}))
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    child = subprocess.run([sys.executable, "-m", "edgeopt", "run", str(recipe), "--format", "json", "--quiet",
                            "--no-measure"], capture_output=True, text=True, env=env, cwd=REPO,
                           preexec_fn=_limited(MEMORY_LIMIT), timeout=600)
    tail = (child.stderr.strip().splitlines() or [""])[-1]
    assert child.returncode == 0, f"exit {child.returncode} under a {MEMORY_LIMIT / 1e9:.2f} GB limit: {tail}"
    stage = json.loads(child.stdout)["stages"][-1]
    assert stage["summary"].startswith("int8 QDQ:"), stage["summary"]  # not "left unchanged: ... failed"
    assert f"calibrated (minmax) on {DET_CALIBRATION} samples" in stage["summary"]
    [out] = _outputs(tmp_path / "out.onnx", tmp_path / "data.npz")
    assert out.shape == (DET_DATA, 1, DET_SIZE, DET_SIZE) and np.isfinite(out).all()
