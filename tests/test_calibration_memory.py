"""Calibration and activation collection in bounded memory (edgeopt/graph/activations.py).

With a budget small enough that every run takes one sample and the values come
in several groups, each statistic must equal what the old all-at-once
computation gave: onnxruntime's own calibrators on every sample in one batch
(minmax exactly, and the percentile / entropy histograms too), bias-correction
means, APoZ and reconstruction; a pass that cannot fit says so in one line.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

import edgeopt.graph.activations as acts
from edgeopt.errors import OutOfMemory
from edgeopt.passes import PassContext, get_pass
from edgeopt.verify.fidelity import compare
from test_quant_weights import toy_model

DATA = {"input": np.random.default_rng(7).standard_normal((40, 3, 8, 8)).astype(np.float32)}
TINY = 20_000  # bytes: one sample per run, the toy model's tensors in four groups


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(acts, "ACTIVATION_BUDGET", TINY)
    acts._FOOTPRINTS.clear()


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def old_calibration(model, path: Path, method: str, percentile: float):
    """What quantize_static computed before: onnxruntime's calibrator on every sample in one batch."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgeopt.quant.calibrate import ArrayReader

    cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}[method]
    extra = {"percentile": percentile} if method == "percentile" else {}
    with contextlib.redirect_stdout(io.StringIO()):
        cal = create_calibrator(path, [], augmented_model_path=str(path.with_name("aug.onnx")), calibrate_method=cm,
                                extra_options=extra)
        cal.collect_data(ArrayReader(DATA, len(DATA["input"])))
        return cal.compute_data()


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_ranges_equal_onnxruntimes_all_at_once_computation(method, tmp_path, tiny):
    from edgeopt.quant.calibrate import calibrate, calibration_tensors

    model = toy_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    old = old_calibration(model, path, method, 99.9)
    tensors, _ = calibration_tensors(path)
    plan = acts.plan(acts.footprint(model, DATA), tensors)
    assert plan.run == 1 and len(plan.groups) >= 3  # the budget really splits samples and values
    with contextlib.redirect_stdout(io.StringIO()):
        new = calibrate(model, path, DATA, method, 99.9)
    assert sorted(old.keys()) == sorted(new.keys()) and len(new.keys()) == 10
    for name in old.keys():
        for attr in ("lowest", "highest", "hist", "hist_edges"):
            a, b = getattr(old[name], attr, None), getattr(new[name], attr, None)
            if a is None and b is None:
                continue
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (name, attr, a, b)


def test_quantized_model_does_not_depend_on_the_budget_and_computes_the_float_outputs(monkeypatch):
    cls = get_pass("quantize_static")
    model = toy_model()

    def quantize():
        return cls().apply(model, cls.Params(mode="all"), PassContext(data=DATA, input_shapes={"input": [1, 3, 8, 8]}))

    default = quantize().model
    monkeypatch.setattr(acts, "ACTIVATION_BUDGET", TINY)
    acts._FOOTPRINTS.clear()
    small = quantize().model
    assert small.SerializeToString() == default.SerializeToString()
    x = {"input": np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    ref, got = session(model).run(None, x)[0], session(small).run(None, x)[0]
    fid = compare([ref], [got])
    assert fid["cosine"] > 0.999 and fid["max_abs_error"] < 0.05 * np.abs(ref).max()


def test_stream_pieces_stay_in_budget_and_hold_what_one_run_gives(tiny):
    model = toy_model()
    names = ["c1", "r1", "c2", "c3", "r3", "logits"]
    stream = acts.Stream(model, names, DATA)
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for piece in stream:
        assert sum(v.nbytes for v in piece.values.values()) <= TINY // 2
        assert piece.stop - piece.start == 1
        for k, v in piece.values.items():
            seen[k].append(v)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for n in names:
        probe.graph.output.add().name = n
    whole = dict(zip(names, session(probe).run(names, DATA)))
    for n in names:
        np.testing.assert_array_equal(np.concatenate(seen[n]), whole[n])
    assert acts.collect_activations(model, ["r1"], DATA)["r1"].shape == (40, 16, 8, 8)


def test_bias_correction_means_and_node_errors_do_not_depend_on_the_budget(monkeypatch):
    import onnx_ir as ir

    from edgeopt.quant.means import input_means
    from edgeopt.quant.sensitivity import local_errors

    model = toy_model()
    nodes = [n for n in ir.from_proto(model).graph if n.op_type in ("Conv", "Gemm", "MatMul")]
    cls = get_pass("quantize_static")
    q = cls().apply(model, cls.Params(mode="all"), PassContext(data=DATA, input_shapes={"input": [1, 3, 8, 8]})).model
    cands = ["conv_0", "conv_2", "conv_3", "gemm_7", "matmul_8"]

    def both():
        return input_means(model, nodes, DATA), local_errors(model, q, DATA, cands)

    means, errors = both()
    monkeypatch.setattr(acts, "ACTIVATION_BUDGET", TINY)
    acts._FOOTPRINTS.clear()
    small_means, small_errors = both()
    assert means.keys() == small_means.keys() and len(means) == 5
    for key, m in means.items():
        np.testing.assert_allclose(small_means[key], m, rtol=1e-12, atol=1e-12)
    r1 = DATA["input"]  # the first conv reads the input: its mean per channel, all samples at once
    np.testing.assert_allclose(means[("input", True)], r1.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    assert errors.keys() == small_errors.keys() and errors
    for name, e in errors.items():
        assert small_errors[name] == pytest.approx(e, rel=1e-5, abs=1e-7)


def test_apoz_and_reconstruction_do_not_depend_on_the_budget(monkeypatch):
    from edgeopt.prune.core import PruneConfig, prune_model
    from test_prune_groups import residual_net

    model = residual_net()
    data = {"x": np.random.default_rng(3).standard_normal((100, 3, 6, 6)).astype(np.float32)}
    configs = [PruneConfig(ratio=0.5, criterion="apoz"), PruneConfig(ratio=0.5, reconstruct=True)]
    default = [prune_model(model, c, data).model for c in configs]
    monkeypatch.setattr(acts, "ACTIVATION_BUDGET", 4_000)  # reconstruction's chunk of 64 shrinks too
    acts._FOOTPRINTS.clear()
    small = [prune_model(model, c, data).model for c in configs]
    x = {"x": np.random.default_rng(4).standard_normal((8, 3, 6, 6)).astype(np.float32)}
    # APoZ keeps the same channels (sums of counts); the refit sees the same rows in other chunks
    assert session(small[0]).run(None, x)[0].tolist() == session(default[0]).run(None, x)[0].tolist()
    a, b = session(small[1]).run(None, x)[0], session(default[1]).run(None, x)[0]
    assert compare([b], [a])["cosine"] > 0.999


def test_a_pass_that_cannot_fit_says_so_in_one_line_and_exits_2(tmp_path, monkeypatch):
    from edgeopt.cli.main import cli

    onnx.save(toy_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **DATA)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "m.onnx", "output": "out.onnx", "data": "d.npz", "device": ["host"],
                                      "passes": ["quantize_static"]}))
    monkeypatch.setattr(acts, "available_bytes", lambda: (1000, "available memory"))
    result = CliRunner().invoke(cli, ["run", str(recipe), "--format", "json", "--quiet", "--no-measure"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("edgeopt: error: pass quantize_static (passes[0]): calibration (minmax) on 40 samples: "
                               "not enough memory: one run needs about"), lines[0]
    assert "1000" not in lines[0] and "0 MB left (available memory)" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


def test_an_allocation_failure_during_a_run_becomes_out_of_memory(monkeypatch):
    class Failing:
        def run(self, names, feeds):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv "
                               "node. Status Message: bfc_arena.cc:360 Failed to allocate memory for requested buffer")

    monkeypatch.setattr(acts, "_session", lambda model, outputs, optimized: Failing())
    with pytest.raises(OutOfMemory, match=r"^collecting activations: out of memory during a run"):
        list(acts.Stream(toy_model(), ["r1"], DATA))
    monkeypatch.setattr(acts, "_session", lambda model, outputs, optimized: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError):  # anything else stays what it is
        list(acts.Stream(toy_model(), ["r1"], DATA))
