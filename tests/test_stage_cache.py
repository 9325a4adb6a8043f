"""The stage cache: a repeated pass prefix is read back, not rerun, and gives the same stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import SAMPLES
from edgeopt.passes.prune_channels import PruneChannels
from edgeopt.pipeline import RunOptions, run_recipe
from edgeopt.recipe.load import parse_recipe
from edgeopt.stage_cache import StageCache

FIGURES = ("macs", "weight_bytes", "est_latency_ms", "est_energy_mj")


def _recipe(tmp_path: Path, ratio: float, bits: int = 8):
    doc = {"model": str(SAMPLES / "mobilenet_digits.onnx"), "output": str(tmp_path / f"out_{ratio}_{bits}.onnx"),
           "device": "myriadx", "data": str(SAMPLES / "digits_test.npz"),
           "calibration_data": str(SAMPLES / "digits_calib.npz"),
           "passes": ["simplify", "fold_batchnorm", {"prune_channels": {"ratio": ratio}},
                      {"quantize_weights": {"bits": bits}}]}
    return parse_recipe(doc, tmp_path / "r.yaml")


def _run(tmp_path, cache, ratio, bits=8):
    return run_recipe(_recipe(tmp_path, ratio, bits), RunOptions(cache=cache, measure=False))


def _outputs(path: str, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: data})[0]


def test_a_repeated_prefix_is_read_not_rerun(tmp_path, monkeypatch):
    cache = StageCache(tmp_path / "cache")
    first = _run(tmp_path, cache, 0.3)
    assert [s.get("cached") for s in first["stages"][1:]] == [False] * 4
    assert (cache.hits, cache.misses) == (0, 4)

    applied = []
    original = PruneChannels.apply
    monkeypatch.setattr(PruneChannels, "apply", lambda self, *a: applied.append(1) or original(self, *a))
    # same prefix, another bit width: three stages read back, only quantize_weights runs
    second = _run(tmp_path, cache, 0.3, bits=4)
    assert [s["cached"] for s in second["stages"][1:]] == [True, True, True, False]
    assert applied == []
    for a, b in zip(first["stages"][:4], second["stages"][:4]):
        assert {k: a[k] for k in FIGURES} == {k: b[k] for k in FIGURES}
        assert a["fidelity"]["accuracy"] == b["fidelity"]["accuracy"]
    # another ratio: a new key from the pruning stage on
    third = _run(tmp_path, cache, 0.5)
    assert [s["cached"] for s in third["stages"][1:]] == [True, True, False, False]
    assert applied == [1]
    assert third["stages"][3]["macs"] < first["stages"][3]["macs"]


def test_a_cached_run_writes_the_same_model(tmp_path):
    cache = StageCache(tmp_path / "cache")
    fresh = _run(tmp_path, cache, 0.3)
    fresh_bytes = Path(fresh["output"]).read_bytes()
    Path(fresh["output"]).unlink()
    again = _run(tmp_path, cache, 0.3)
    assert all(s["cached"] for s in again["stages"][1:])
    assert Path(again["output"]).read_bytes() == fresh_bytes  # byte-identical model, so identical outputs
    data = np.load(SAMPLES / "digits_test.npz")
    predicted = _outputs(again["output"], data["input"]).argmax(axis=1)
    assert np.mean(predicted == data["labels"]) == pytest.approx(again["stages"][-1]["fidelity"]["accuracy"])


def test_a_damaged_entry_is_a_miss(tmp_path):
    cache = StageCache(tmp_path / "cache")
    _run(tmp_path, cache, 0.3)
    for meta in (tmp_path / "cache").rglob("*.json"):
        meta.write_text("{not json")
    again = _run(tmp_path, cache, 0.3)
    assert [s["cached"] for s in again["stages"][1:]] == [False] * 4
    assert json.loads(next((tmp_path / "cache").rglob("*.json")).read_text())["modified"] in (True, False)
