"""edgeopt.zoo: builders (structure, parameter / MAC counts, sane numbers), variants, files, CLI.

Fast tests build the full-width networks at a small resolution (parameters do
not depend on it) or narrow ones; the ImageNet-size builds are marked slow.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

import edgeopt.zoo as zoo
from edgeopt.errors import UserError
from edgeopt.zoo import (
    build_mobilenet_v2,
    build_resnet18,
    build_resnet50,
    fix_batch,
    save_model_atomic,
    to_opset,
    weights_as_constants,
)
from edgeopt.zoo.__main__ import main as zoo_main
from edgeopt.zoo.mobilenet_v2 import make_divisible

# torchvision's figures (torchvision.models docs; sum(p.numel() for p in m.parameters()))
MOBILENET_V2_PARAMS = 3_504_872
RESNET50_PARAMS = 25_557_032
RESNET18_PARAMS = 11_689_512
MOBILENET_V2_OPS = {"Conv": 52, "BatchNormalization": 52, "Clip": 35, "Add": 10,
                    "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
RESNET50_OPS = {"Conv": 53, "BatchNormalization": 53, "Relu": 49, "Add": 16, "MaxPool": 1,
                "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
RESNET18_OPS = {"Conv": 20, "BatchNormalization": 20, "Relu": 17, "Add": 8, "MaxPool": 1,
                "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}


# -- helpers -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cached(builder, **kwargs) -> onnx.ModelProto:
    return builder(**kwargs)


def cached(builder, **kwargs) -> onnx.ModelProto:
    """One build per configuration per test session; callers must not modify the result."""
    return _cached(builder, **kwargs)


def trainable_params(model: onnx.ModelProto) -> int:
    """Conv / Gemm weights and biases plus BN gamma and beta, read from the graph (torchvision's count)."""
    size = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            total += sum(size[name] for name in node.input[1:])
        elif node.op_type == "BatchNormalization":
            total += size[node.input[1]] + size[node.input[2]]
    return total


def macs_from_shapes(model: onnx.ModelProto) -> int:
    """Conv and Gemm multiply-accumulates per image, from onnx shape inference."""
    inferred = onnx.shape_inference.infer_shapes(fix_batch(model, 1))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            total += int(np.prod(shapes[node.output[0]][1:])) * int(np.prod(weights[node.input[1]][1:]))
        elif node.op_type == "Gemm":
            total += int(np.prod(weights[node.input[1]]))
    return total


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def random_input(model: onnx.ModelProto, batch: int = 2, seed: int = 1) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray, all_nodes: bool = False) -> dict[str, np.ndarray]:
    """onnxruntime outputs by name; with all_nodes, every node's output too."""
    if all_nodes:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        known = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for name in node.output:
                if name not in known:
                    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x})))


def assert_sane_numbers(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Logits finite, spread, input-dependent; no intermediate activation explodes or vanishes."""
    outs = run(model, x, all_nodes=True)
    logits = outs["logits"]
    assert np.isfinite(logits).all()
    assert 0.1 < logits.std() < 100, logits.std()
    spread = np.abs(logits[0] - logits[1]).max()
    assert spread > 0.01 * logits.std(), "the two inputs give (nearly) the same logits"
    ops = {n.output[0]: n.op_type for n in model.graph.node}
    for name, value in outs.items():
        assert np.isfinite(value).all(), name
        assert np.abs(value).max() < 1e3, (name, np.abs(value).max())
        if ops.get(name) in ("BatchNormalization", "Relu", "Clip", "Add"):
            assert 0.05 < value.std() < 20, (name, value.std())


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray, atol: float = 1e-5) -> None:
    ya, yb = run(a, x)["logits"], run(b, x)["logits"]
    assert ya.shape == yb.shape
    assert np.abs(ya - yb).max() <= atol


# -- structure and counts (fast: full width, small resolution) ----------------

@pytest.mark.parametrize("builder, params, ops", [
    (build_mobilenet_v2, MOBILENET_V2_PARAMS, MOBILENET_V2_OPS),
    (build_resnet50, RESNET50_PARAMS, RESNET50_OPS),
    (build_resnet18, RESNET18_PARAMS, RESNET18_OPS),
], ids=["mobilenet_v2", "resnet50", "resnet18"])
def test_params_and_ops_match_torchvision(builder, params, ops):
    model = cached(builder, resolution=32, calibration_images=2)
    assert trainable_params(model) == params
    assert int(props(model)["zoo.params"]) == params
    assert op_counts(model) == ops
    assert int(props(model)["zoo.macs"]) == macs_from_shapes(model)


def test_mobilenet_v2_blocks():
    model = cached(build_mobilenet_v2, resolution=32, calibration_images=2)
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    # block 1 (t=1) has no expand conv; block 2 expands 16 -> 96 and strides in its depthwise conv
    assert "features.1.expand.conv" not in nodes
    assert weights["features.2.expand.conv.weight"] == [96, 16, 1, 1]
    assert weights["features.2.dw.conv.weight"] == [96, 1, 3, 3]
    dw = {a.name: helper.get_attribute_value(a) for a in nodes["features.2.dw.conv"].attribute}
    assert dw["group"] == 96 and dw["strides"] == [2, 2] and dw["pads"] == [1, 1, 1, 1]
    assert weights["features.18.conv.weight"] == [1280, 320, 1, 1]
    assert weights["classifier.weight"] == [1000, 1280]
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 17
    # ReLU6 is Clip with min / max inputs 0 and 6
    clip = nodes["features.0.relu6"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert clip.op_type == "Clip" and [float(inits[n]) for n in clip.input[1:]] == [0.0, 6.0]
    # residual adds exactly where stride 1 and channels match
    adds = sorted(int(n.name.split(".")[1]) for n in model.graph.node if n.op_type == "Add")
    assert adds == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


def test_resnet50_names_follow_torchvision():
    model = cached(build_resnet50, resolution=32, calibration_images=2)
    nodes = {n.name: n.op_type for n in model.graph.node}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    assert nodes["layer1.0.conv1"] == "Conv" and nodes["layer1.0.bn1"] == "BatchNormalization"
    assert nodes["layer4.2.add"] == "Add" and nodes["layer4.2.relu3"] == "Relu"
    assert weights["conv1.weight"] == [64, 3, 7, 7]
    assert weights["layer1.0.downsample.0.weight"] == [256, 64, 1, 1]
    assert weights["layer2.0.conv2.weight"] == [128, 128, 3, 3]
    assert weights["layer3.5.bn3.running_var"] == [1024]
    assert weights["fc.weight"] == [1000, 2048] and weights["fc.bias"] == [1000]
    # v1.5: a downsampling bottleneck strides in its 3x3 conv, not its first 1x1
    strides = {n.name: helper.get_attribute_value(a) for n in model.graph.node
               for a in n.attribute if a.name == "strides"}
    assert strides["layer2.0.conv1"] == [1, 1] and strides["layer2.0.conv2"] == [2, 2]
    assert sum(1 for n in nodes if ".downsample.0" in n) == 4


@pytest.mark.parametrize("builder", [build_mobilenet_v2, build_resnet18], ids=["mobilenet_v2", "resnet18"])
def test_graph_interface(builder):
    model = cached(builder, resolution=32, calibration_images=2)
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == ("input", ["N", 3, 32, 32])
    assert (out.name, dims(out)) == ("logits", ["N", 1000])
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    used = {name for n in model.graph.node for name in n.input}
    assert {i.name for i in model.graph.initializer} <= used
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    assert model.opset_import[0].version == 13 and model.ir_version == 7
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert helper.get_attribute_value(bn.attribute[0]) == pytest.approx(1e-5)


def test_same_seed_same_bytes_other_seed_other_weights():
    a, b, c = (build_mobilenet_v2(width_mult=0.35, resolution=32, seed=seed, calibration_images=8)
               for seed in (3, 3, 4))
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0].raw_data != c.graph.initializer[0].raw_data


def test_make_divisible_matches_torchvision():
    assert make_divisible(32 * 1.0) == 32
    assert make_divisible(32 * 0.35) == 16  # 8 would be more than 10% below 11.2
    assert make_divisible(24 * 0.35) == 8
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(96 * 0.75) == 72


def test_width_and_classes():
    model = build_mobilenet_v2(width_mult=0.5, resolution=32, num_classes=10, calibration_images=2)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    assert weights["features.0.conv.weight"] == [16, 3, 3, 3]
    assert weights["features.17.project.conv.weight"] == [160, 480, 1, 1]
    assert weights["classifier.weight"] == [10, 1280]
    assert run(model, random_input(model))["logits"].shape == (2, 10)


@pytest.mark.parametrize("opset", [9, 11, 17])
def test_other_opsets_compute_the_same(opset):
    base = cached(build_mobilenet_v2, width_mult=0.35, resolution=32, calibration_images=8)
    model = build_mobilenet_v2(width_mult=0.35, resolution=32, opset=opset, calibration_images=8)
    onnx.checker.check_model(model, full_check=True)
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    assert len(clip.input) == (1 if opset < 11 else 3)
    assert_same_outputs(base, model, random_input(base), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="opset must be in"):
        build_resnet18(opset=8, resolution=32)
    with pytest.raises(ValueError, match="width_mult"):
        build_mobilenet_v2(width_mult=0)
    with pytest.raises(ValueError, match="calibration_images must be >= 2"):
        build_mobilenet_v2(resolution=32, calibration_images=1)


# -- numbers (fast: small networks) ------------------------------------------

@pytest.mark.parametrize("builder, kwargs", [
    (build_mobilenet_v2, dict(width_mult=0.35, resolution=64)),
    (build_resnet18, dict(resolution=64)),
], ids=["mobilenet_v2-0.35-64", "resnet18-64"])
def test_runs_with_sane_numbers(builder, kwargs):
    model = cached(builder, **kwargs)
    assert_sane_numbers(model, random_input(model))


@pytest.mark.parametrize("builder, kwargs", [
    (build_mobilenet_v2, dict(width_mult=0.35, resolution=64)),
    (build_resnet18, dict(resolution=64)),
], ids=["mobilenet_v2-0.35-64", "resnet18-64"])
def test_bn_statistics_are_those_of_the_bn_input(builder, kwargs):
    """On fresh random images, each BN's input has about its running mean and variance."""
    model = cached(builder, **kwargs)
    outs = run(model, random_input(model, batch=16, seed=7), all_nodes=True)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    ratios, shifts = [], []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        x = outs[node.input[0]]
        mean, var = inits[node.input[3]], inits[node.input[4]]
        ratios.append(x.var(axis=(0, 2, 3)) / var)
        shifts.append(np.abs(x.mean(axis=(0, 2, 3)) - mean) / np.sqrt(var))
    layer_medians = [np.median(r) for r in ratios]
    assert 0.75 < min(layer_medians) and max(layer_medians) < 1.33, layer_medians
    ratios, shifts = np.concatenate(ratios), np.concatenate(shifts)
    assert 0.9 < np.median(ratios) < 1.1
    assert np.quantile(ratios, 0.01) > 0.4 and np.quantile(ratios, 0.99) < 2.5
    assert np.median(shifts) < 0.2
    # running means are not all zero: the conv inputs after ReLU are not centred
    assert np.mean([np.abs(v).mean() for k, v in inits.items() if k.endswith("running_mean")]) > 1e-3


# -- variants ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model() -> onnx.ModelProto:
    return cached(build_mobilenet_v2, width_mult=0.35, resolution=32, calibration_images=8)


def test_weights_as_constants(small_model):
    before = small_model.SerializeToString()
    model = weights_as_constants(small_model)
    assert small_model.SerializeToString() == before, "the input model was modified"
    assert len(model.graph.initializer) == 0
    constants = [n for n in model.graph.node if n.op_type == "Constant"]
    assert len(constants) == len(small_model.graph.initializer)
    assert constants[0].name.startswith("const.")
    onnx.checker.check_model(model, full_check=True)
    assert_same_outputs(small_model, model, random_input(small_model))


def test_weights_as_constants_converts_subgraphs():
    branch = lambda name, value: helper.make_graph(  # noqa: E731
        [helper.make_node("Add", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
        [helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [2])],
        initializer=[onnx.numpy_helper.from_array(np.full(2, value, np.float32), f"{name}_w")])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", -1.0))],
        "if", [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
               helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = weights_as_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7))
    onnx.checker.check_model(model, full_check=True)
    then_branch = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert not then_branch.initializer and then_branch.node[0].op_type == "Constant"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, 2.0], np.float32)
    out = {flag: session.run(None, {"cond": np.array(flag), "x": x})[0] for flag in (True, False)}
    assert np.allclose(out[True], x + 1) and np.allclose(out[False], x - 1)


@pytest.mark.parametrize("version", [14, 17, 21])
def test_to_opset_up(small_model, version):
    model = to_opset(small_model, version)
    assert model.opset_import[0].version == version
    assert model.ir_version == helper.find_min_ir_version_for(model.opset_import)
    assert small_model.opset_import[0].version == 13
    onnx.checker.check_model(model, full_check=True)
    assert_same_outputs(small_model, model, random_input(small_model))


def test_to_opset_same_version_is_a_copy(small_model):
    model = to_opset(small_model, 13)
    assert model is not small_model and model.SerializeToString() == small_model.SerializeToString()


def test_to_opset_errors_are_clear(small_model):
    with pytest.raises(UserError, match=r"from opset 13 to 11: No Adapter .* build the model at opset 11"):
        to_opset(small_model, 11)
    with pytest.raises(UserError, match="opset 999 does not exist"):
        to_opset(small_model, 999)


def test_fix_batch(small_model):
    model = fix_batch(small_model, 2)
    first_dim = lambda vi: vi.type.tensor_type.shape.dim[0]  # noqa: E731
    assert first_dim(model.graph.input[0]).dim_value == 2
    assert first_dim(model.graph.output[0]).dim_value == 2
    assert first_dim(small_model.graph.input[0]).dim_param == "N"
    onnx.checker.check_model(model, full_check=True)
    assert_same_outputs(small_model, model, random_input(small_model, batch=2))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(model, random_input(small_model, batch=3))
    assert fix_batch(model, 2).SerializeToString() == model.SerializeToString()
    with pytest.raises(UserError, match="input 'input' already has a static batch of 2, not 4"):
        fix_batch(model, 4)


def test_fix_batch_updates_value_info(small_model):
    inferred = onnx.shape_inference.infer_shapes(small_model)
    model = fix_batch(inferred, 1)
    dims0 = {vi.type.tensor_type.shape.dim[0].dim_value for vi in model.graph.value_info}
    assert dims0 == {1}


# -- files and CLI -------------------------------------------------------------

def test_save_model_atomic(tmp_path, small_model):
    path = save_model_atomic(small_model, tmp_path / "sub" / "m.onnx")
    assert onnx.load(path).SerializeToString() == small_model.SerializeToString()
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]

    class Broken:
        def SerializeToString(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_model_atomic(Broken(), path)
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"], "temporary file left behind"
    assert onnx.load(path).SerializeToString() == small_model.SerializeToString()


def test_cli_builds_keeps_and_forces(tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.BUILDERS, "resnet18", lambda: cached(build_resnet18, resolution=32, calibration_images=2))
    runner = CliRunner()
    result = runner.invoke(zoo_main, ["--out", str(tmp_path), "resnet18"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "resnet18.onnx"
    assert "wrote" in result.stdout and "11,689,512 params" in result.stdout
    assert trainable_params(onnx.load(path)) == RESNET18_PARAMS

    path.write_bytes(b"sentinel")
    result = runner.invoke(zoo_main, ["--out", str(tmp_path), "resnet18"])
    assert result.exit_code == 0 and result.stdout.startswith("kept")
    assert path.read_bytes() == b"sentinel"

    result = runner.invoke(zoo_main, ["--out", str(tmp_path), "--force", "resnet18"])
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert path.read_bytes() != b"sentinel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.onnx"]


def test_ensure_model_builds_once(tmp_path, monkeypatch):
    calls = []

    def builder():
        calls.append(1)
        return cached(build_mobilenet_v2, width_mult=0.35, resolution=32, calibration_images=8)

    monkeypatch.setitem(zoo.BUILDERS, "mobilenetv2-1.0-224", builder)
    path = zoo.ensure_model("mobilenetv2-1.0-224", tmp_path)
    assert path == tmp_path / "mobilenetv2-1.0-224.onnx" and path.exists()
    assert zoo.ensure_model("mobilenetv2-1.0-224", tmp_path) == path and len(calls) == 1
    zoo.ensure_model("mobilenetv2-1.0-224", tmp_path, force=True)
    assert len(calls) == 2
    with pytest.raises(KeyError, match="unknown zoo model 'vgg16'; known: mobilenetv2-1.0-224, resnet50"):
        zoo.ensure_model("vgg16", tmp_path)


def test_cli_rejects_unknown_names(tmp_path):
    result = CliRunner().invoke(zoo_main, ["--out", str(tmp_path), "resnet51"])
    assert result.exit_code == 2
    assert "'resnet51' is not one of" in result.output
    assert not list(tmp_path.iterdir())


# -- ImageNet size (slow) ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("builder, params, macs, ops", [
    (build_mobilenet_v2, MOBILENET_V2_PARAMS, 300_774_272, MOBILENET_V2_OPS),
    (build_resnet50, RESNET50_PARAMS, 4_089_184_256, RESNET50_OPS),
    (build_resnet18, RESNET18_PARAMS, 1_814_073_344, RESNET18_OPS),
], ids=["mobilenet_v2", "resnet50", "resnet18"])
def test_imagenet_models(builder, params, macs, ops):
    model = cached(builder)
    onnx.checker.check_model(model, full_check=True)
    assert trainable_params(model) == params
    assert op_counts(model) == ops
    assert int(props(model)["zoo.macs"]) == macs == macs_from_shapes(model)
    assert_sane_numbers(model, random_input(model))


@pytest.mark.slow
def test_imagenet_variants():
    model = cached(build_mobilenet_v2)
    x = random_input(model)
    for variant in (weights_as_constants(model), to_opset(model, 17), fix_batch(model, 2)):
        assert_same_outputs(model, variant, x)


@pytest.mark.slow
def test_cli_subprocess_writes_all_models(tmp_path):
    out = tmp_path / "models"
    cmd = [sys.executable, "-m", "edgeopt.zoo", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mobilenetv2-1.0-224.onnx", "resnet18.onnx", "resnet50.onnx"]
    assert 95e6 < (out / "resnet50.onnx").stat().st_size < 110e6
    assert props(onnx.load(out / "resnet50.onnx"))["zoo.params"] == str(RESNET50_PARAMS)
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stdout.count("kept") == 3
