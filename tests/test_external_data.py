"""External data, models over 2 GiB, output file modes, missing data files (graph/io.py, make_session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgeopt.errors import UserError
from edgeopt.graph import io
from edgeopt.graph.io import data_file_path, load_model, read_model, save_model
from edgeopt.verify.runtime import make_session


def _mlp(seed: int = 0, hidden: int = 128) -> onnx.ModelProto:
    """x [N,16] -> MatMul W1 -> Relu -> MatMul W2 -> Add b -> y [N,8]: weights of 8 KiB, 4 KiB, 32 bytes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((hidden, 8)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    """onnx's own writer, as an exporter would write it (every tensor external); `model` is left as it is."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the data of the model it is given out to the file
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)


def _run(model_or_path, x: np.ndarray) -> np.ndarray:
    src = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _edgeopt(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- loading ---------------------------------------------------------------------------------------

def test_external_data_is_read_with_its_data(tmp_path):
    model = _mlp()
    _save_external(model, tmp_path / "m.onnx", "weights.bin")
    loaded, external = read_model(tmp_path / "m.onnx")
    assert external is True
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    for a, b in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert read_model(tmp_path / "m.onnx").external_data is True
    onnx.save(model, str(tmp_path / "inline.onnx"))
    assert read_model(tmp_path / "inline.onnx").external_data is False


def test_missing_external_data_file_is_a_user_error_naming_it(tmp_path):
    _save_external(_mlp(), tmp_path / "m.onnx", "weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(UserError, match=r"external-data file .*weights\.bin not found"):
        load_model(tmp_path / "m.onnx")


def test_short_external_data_file_is_a_user_error_naming_it(tmp_path):
    _save_external(_mlp(), tmp_path / "m.onnx", "weights.bin")
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match=r"weights\.bin is too short"):
        load_model(tmp_path / "m.onnx")


def test_external_data_without_length_must_match_the_shape(tmp_path):
    """No `length` key: onnx reads to the end of the file, so a file with extra bytes is not this model's."""
    model = _mlp()
    w = numpy_helper.to_array(model.graph.initializer[0])
    ref = onnx.TensorProto(name="W1", dims=w.shape, data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    ref.external_data.add(key="location", value="w1.bin")
    model.graph.initializer[0].CopyFrom(ref)
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "w1.bin").write_bytes(w.tobytes() + b"\0" * 4)
    with pytest.raises(UserError, match=r"tensor 'W1' has 8196 bytes of external data, its shape needs 8192"):
        load_model(tmp_path / "m.onnx")
    (tmp_path / "w1.bin").write_bytes(w.tobytes())
    np.testing.assert_array_equal(numpy_helper.to_array(load_model(tmp_path / "m.onnx").graph.initializer[0]), w)


@pytest.mark.parametrize("command", ["profile", "run", "compare"])
def test_cli_missing_external_data_exits_2_naming_the_file(tmp_path, command):
    _save_external(_mlp(), tmp_path / "m.onnx", "weights.bin")
    (tmp_path / "weights.bin").unlink()
    if command == "profile":
        proc = _edgeopt("profile", tmp_path / "m.onnx", "--no-measure")
    elif command == "compare":
        onnx.save(_mlp(), str(tmp_path / "ok.onnx"))
        proc = _edgeopt("compare", tmp_path / "ok.onnx", tmp_path / "m.onnx")
    else:
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": "m.onnx", "output": "out.onnx",
                                                         "passes": ["simplify"]}))
        proc = _edgeopt("run", tmp_path / "r.yaml", "--no-measure")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "weights.bin not found" in lines[0] and "m.onnx" in lines[0], proc.stderr
    assert not (tmp_path / "out.onnx").exists()


# --- saving ----------------------------------------------------------------------------------------

def test_external_input_is_written_with_external_data_beside_the_output(tmp_path):
    model = _mlp()
    _save_external(model, tmp_path / "m.onnx", "weights.bin")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": "m.onnx", "output": "out/opt.onnx",
                                                     "passes": ["quantize_weights"]}))
    proc = _edgeopt("run", tmp_path / "r.yaml", "--no-measure", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert _files(out) == ["opt.onnx", "opt.onnx.data"]
    head = onnx.load(str(out / "opt.onnx"), load_external_data=False)
    external = [t for t in head.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    int8 = {t.name for t in head.graph.initializer if t.data_type == TensorProto.INT8}
    assert len(int8) == 2 and int8 <= {t.name for t in external}  # 2 KiB and 1 KiB of int8 weights
    for t in external:
        assert not t.HasField("raw_data")  # no stale inline copy
        assert {e.key: e.value for e in t.external_data}["location"] == "opt.onnx.data"
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    ref, got = _run(model, x), _run(out / "opt.onnx", x)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()  # int8 weights
    assert np.abs(got - ref).max() > 0  # it really is the quantized model


def test_save_external_roundtrips_bytes_and_keeps_the_callers_model(tmp_path):
    model = _mlp()
    before = model.SerializeToString(deterministic=True)
    save_model(model, tmp_path / "a.onnx", external_data=True)
    save_model(model, tmp_path / "b.onnx", external_data=True)
    assert model.SerializeToString(deterministic=True) == before
    assert _files(tmp_path) == ["a.onnx", "a.onnx.data", "b.onnx", "b.onnx.data"]
    assert (tmp_path / "a.onnx.data").read_bytes() == (tmp_path / "b.onnx.data").read_bytes()
    head = onnx.load(str(tmp_path / "a.onnx"), load_external_data=False)
    kinds = {t.name: t.data_location for t in head.graph.initializer}
    assert kinds == {"W1": TensorProto.EXTERNAL, "W2": TensorProto.EXTERNAL, "b": TensorProto.DEFAULT}  # b: 32 B
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in head.graph.initializer[:2]]
    assert offsets == [0, 8192]  # W1 is 8 KiB; offsets are page-aligned
    again = load_model(tmp_path / "a.onnx")
    assert again.SerializeToString(deterministic=True) == before
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "a.onnx", x), _run(model, x))


def test_tensors_in_subgraphs_and_constants_go_external_too(tmp_path):
    """A big Constant inside an If branch and typed (float_data) initializers are written external."""
    rng = np.random.default_rng(3)
    big = rng.standard_normal((16, 16)).astype(np.float32)
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(big, "k")),
         helper.make_node("MatMul", ["x", "k"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 16])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 16])])
    typed = helper.make_tensor("w", TensorProto.FLOAT, [16, 16], rng.standard_normal(256).astype(np.float32).tolist())
    nodes = [helper.make_node("If", ["c"], ["i"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("MatMul", ["i", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16]),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], [typed])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, tmp_path / "m.onnx", external_data=True)
    head = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert head.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert not head.graph.initializer[0].float_data
    then_loaded = next(a.g for a in head.graph.node[0].attribute if a.name == "then_branch")
    k = then_loaded.node[0].attribute[0].t
    assert k.data_location == TensorProto.EXTERNAL and not k.HasField("raw_data")
    assert (tmp_path / "m.onnx").stat().st_size < 1024
    x = rng.standard_normal((2, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for cond in (True, False):
        got = session.run(None, {"x": x, "c": np.array(cond)})[0]
        want = (x @ big if cond else -x) @ numpy_helper.to_array(typed)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_over_the_inline_limit_is_written_external_whatever_the_input(tmp_path, monkeypatch):
    model = _mlp()
    save_model(model, tmp_path / "small.onnx")
    assert _files(tmp_path) == ["small.onnx"]
    monkeypatch.setattr(io, "INLINE_LIMIT", 13000)  # W1 + W2 + b = 12320 bytes: under
    save_model(model, tmp_path / "under.onnx")
    assert not data_file_path(tmp_path / "under.onnx").exists()
    monkeypatch.setattr(io, "INLINE_LIMIT", 12000)  # over
    save_model(model, tmp_path / "over.onnx")
    assert data_file_path(tmp_path / "over.onnx").exists()
    assert load_model(tmp_path / "over.onnx").SerializeToString(deterministic=True) == \
        model.SerializeToString(deterministic=True)


def test_make_session_over_the_limit_loads_from_external_data(monkeypatch):
    model = _mlp()
    x = np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)
    want = _run(model, x)
    monkeypatch.setattr(io, "INLINE_LIMIT", 12000)
    written = []
    real_save = io.save_model
    monkeypatch.setattr("edgeopt.graph.session.save_model",
                        lambda m, p, **kw: (written.append(Path(p)), real_save(m, p, **kw)))
    got = make_session(model, threads=1).run(None, {"x": x})[0]
    assert len(written) == 1 and not written[0].parent.exists()  # the temporary folder is gone
    np.testing.assert_array_equal(got, want)


def test_shape_runs_and_digests_work_over_the_limit(monkeypatch):
    """The shape layer's onnxruntime run and the stage cache's digest take models past 2 GiB (here a
    lowered limit): they cannot be serialized whole."""
    from edgeopt.graph.io import model_digest
    from edgeopt.graph.shapes.run import run_values

    model = _mlp()
    small = model_digest(model)
    monkeypatch.setattr(io, "INLINE_LIMIT", 12000)
    assert io.needs_external_data(model)
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    values = run_values(model, {"x": [3, 16]}, ["h"], {"x": x})
    np.testing.assert_allclose(values["h"], x @ numpy_helper.to_array(model.graph.initializer[0]), rtol=1e-5, atol=1e-5)
    big = model_digest(model)
    assert big == model_digest(model) and len(big) == 64
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    weight = changed.graph.initializer[0]
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 1
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    assert model_digest(changed) != big
    monkeypatch.setattr(io, "INLINE_LIMIT", 2**31 - 2**28)
    assert model_digest(model) == small


# --- file modes and atomic writes ------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_model(_mlp(), tmp_path / "inline.onnx")
        save_model(_mlp(), tmp_path / "ext.onnx", external_data=True)
    finally:
        os.umask(old)
    for name in ("inline.onnx", "ext.onnx", "ext.onnx.data"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_run_output_mode_follows_the_umask(tmp_path):
    onnx.save(_mlp(), str(tmp_path / "m.onnx"))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": "m.onnx", "output": "out.onnx",
                                                     "passes": ["simplify"]}))
    proc = subprocess.run(f"umask 027 && {sys.executable} -m edgeopt run r.yaml --no-measure --quiet",
                          shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.onnx").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("external", [False, True])
def test_a_failed_write_leaves_no_temporary_files_and_the_old_output(tmp_path, monkeypatch, external):
    save_model(_mlp(seed=1), tmp_path / "out.onnx", external_data=external)
    old = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        save_model(_mlp(seed=2), tmp_path / "out.onnx", external_data=external)
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == old


def test_a_failed_external_write_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    """The data file is half written when the second tensor fails: no temp file, no output."""
    calls = []
    real = io._DataWriter.__call__

    def flaky(self, tensor):
        calls.append(tensor.name)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real(self, tensor)

    monkeypatch.setattr(io._DataWriter, "__call__", flaky)
    with pytest.raises(MemoryError):
        save_model(_mlp(), tmp_path / "out.onnx", external_data=True)
    assert _files(tmp_path) == []


# --- a model over 2 GiB ----------------------------------------------------------------------------

BIG_N = 16384  # a [16384, 16384] float32 weight is 2^28 elements, 1 GiB
BIG_SHAPES = [(BIG_N, BIG_N), (BIG_N, BIG_N), (BIG_N, 64)]  # 2 GiB + 4 MiB: protobuf cannot hold it inline


def _write_big_model(folder: Path) -> None:
    """x [batch, 16384] -> Identity -> MatMul W0 -> MatMul W1 -> MatMul W2 -> y [batch, 64], weights
    written straight to m.onnx.data a 64 MiB block at a time (this process never holds a weight)."""
    rng = np.random.default_rng(0)
    inits = []
    with open(folder / "m.onnx.data", "wb") as f:
        for i, (rows, cols) in enumerate(BIG_SHAPES):
            offset = f.tell()
            bound = float(np.sqrt(3.0 / rows))  # unit-variance outputs layer after layer
            for _ in range(0, rows, 1024):
                f.write(((rng.random((1024, cols), dtype=np.float32) - 0.5) * (2 * bound)).tobytes())
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[rows, cols],
                            data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "m.onnx.data"), ("offset", str(offset)), ("length", str(rows * cols * 4))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
    nodes = [helper.make_node("Identity", ["x"], ["h0"], name="identity")]
    nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"h{i + 1}" if i < 2 else "y"], name=f"fc{i}")
              for i in range(3)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", BIG_N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "m.onnx").write_bytes(model.SerializeToString())


def _run_path(path: Path, x: np.ndarray) -> np.ndarray:
    """One session at a time, freed before the next: this process stays at one model's size."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        return session.run(None, {"x": x})[0]
    finally:
        del session


@pytest.mark.slow
@pytest.mark.huge
def test_a_model_over_2_gib_through_simplify_quantize_weights_and_profile(tmp_path):
    started = time.perf_counter()
    _write_big_model(tmp_path)
    data_bytes = sum(r * c * 4 for r, c in BIG_SHAPES)
    assert data_bytes > 2**31
    x = np.random.default_rng(1).standard_normal((2, BIG_N)).astype(np.float32)
    try:
        ref = _run_path(tmp_path / "m.onnx", x)

        # simplify: the output is over 2 GiB, so it can only be written with external data
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({"model": "m.onnx", "output": "out/s.onnx",
                                                         "passes": ["simplify"]}))
        proc = _edgeopt("run", tmp_path / "s.yaml", "--no-measure", "--quiet", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        assert "-1 Identity" in json.loads(proc.stdout)["stages"][1]["summary"]
        assert _files(tmp_path / "out") == ["s.onnx", "s.onnx.data"]
        assert (tmp_path / "out/s.onnx").stat().st_size < 4096
        assert (tmp_path / "out/s.onnx.data").stat().st_size == data_bytes  # 1 GiB tensors: no padding
        head = onnx.load(str(tmp_path / "out/s.onnx"), load_external_data=False)
        assert [n.op_type for n in head.graph.node] == ["MatMul"] * 3
        assert all(t.data_location == TensorProto.EXTERNAL and not t.HasField("raw_data")
                   for t in head.graph.initializer)
        np.testing.assert_allclose(_run_path(tmp_path / "out/s.onnx", x), ref, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(ref).max()))

        # quantize_weights on simplify's output: 0.5 GiB of int8, external like its input
        (tmp_path / "q.yaml").write_text(yaml.safe_dump({"model": "out/s.onnx", "output": "out/q.onnx",
                                                         "passes": ["quantize_weights"]}))
        proc = _edgeopt("run", tmp_path / "q.yaml", "--no-measure", "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert _files(tmp_path / "out") == ["q.onnx", "q.onnx.data", "s.onnx", "s.onnx.data"]
        head = onnx.load(str(tmp_path / "out/q.onnx"), load_external_data=False)
        int8 = [t for t in head.graph.initializer if t.data_type == TensorProto.INT8]
        assert len(int8) == 3 and all(t.data_location == TensorProto.EXTERNAL for t in int8)
        assert data_bytes // 4 <= (tmp_path / "out/q.onnx.data").stat().st_size < data_bytes // 4 + 2**20
        got = _run_path(tmp_path / "out/q.onnx", x)
        cosine = float(np.sum(got * ref) / np.linalg.norm(got) / np.linalg.norm(ref))
        assert cosine > 0.999  # three int8 per-channel layers: about 0.4 % error each
        assert 0 < np.abs(got - ref).max() < 0.05 * np.abs(ref).max()

        # profile, with onnxruntime's measured latency: a session of the 2 GiB model
        proc = _edgeopt("profile", tmp_path / "out/s.onnx", "--format", "json", "--quiet")
        assert proc.returncode == 0, proc.stderr
        totals = json.loads(proc.stdout)["totals"]
        assert totals["macs"] == sum(r * c for r, c in BIG_SHAPES)  # batch 1
        assert totals["weight_bytes"] == data_bytes
        assert totals["measured_latency_ms"] > 0
    finally:
        for big in tmp_path.rglob("*.data"):  # pytest keeps the last runs' folders: not 5 GB of them
            big.unlink()
    print(f"over-2-GiB chain: {time.perf_counter() - started:.1f} s")


def test_an_inline_output_removes_a_stale_data_file(tmp_path):
    path = tmp_path / "out.onnx"
    save_model(_mlp(), path, external_data=True)
    assert data_file_path(path).exists()
    save_model(_mlp(seed=1), path)
    assert not data_file_path(path).exists()
    assert not [t for t in load_model(path).graph.initializer if t.data_location == TensorProto.EXTERNAL]
