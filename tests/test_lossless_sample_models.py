"""The lossless passes on the real sample models (and the builder ImageNet models, slow).

Every stage must match the previous one to float rounding (max abs error
<= 1e-4 of the output scale), every BN must go, the node count must drop and
the accuracy on the labelled digits must not move.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from edgeopt.passes import PassContext, get_pass
from edgeopt.verify.runtime import make_session, run_batched

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
CHAIN = ("simplify", "fold_batchnorm", "fuse_relu6")
LOSSLESS = 1e-4  # of the output scale, as the pipeline demands
SAMPLE_MODELS = ["mobilenet_digits", "resnet_digits", "vgg_digits", "resnet_digits_opset11",
                 "mobilenet_digits_constants"]


def sample(name: str) -> Path:
    path = SAMPLES / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} is not in sample_models/ yet")
    return path


@pytest.fixture(scope="module")
def digits():
    path = SAMPLES / "digits_test.npz"
    if not path.exists():
        pytest.skip("sample_models/digits_test.npz is not there yet")
    data = np.load(path)
    return data["input"][:512].astype(np.float32), data["labels"][:512]


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    return run_batched(make_session(model), model, {name: x})[0]


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run_chain(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray | None = None):
    """Apply the three passes in turn; each stage is checked against the one before it."""
    ref = outputs(model, x)
    first = ref
    for name in CHAIN:
        cls = get_pass(name)
        result = cls().apply(model, cls.Params(), PassContext())
        onnx.checker.check_model(result.model, full_check=True)
        out = outputs(result.model, x)
        scale = max(1.0, float(np.max(np.abs(ref))))
        err = float(np.max(np.abs(out.astype(np.float64) - ref)))
        assert err <= LOSSLESS * scale, f"{name}: max abs error {err:.3g} > {LOSSLESS * scale:.3g}"
        model, ref = result.model, out
    return model, first, ref


@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_model_loses_every_bn_and_nothing_else(name, digits):
    x, labels = digits
    original = onnx.load(str(sample(name)))
    before = ops(original)
    model, first, last = run_chain(original, x)
    after = ops(model)
    assert after["BatchNormalization"] == 0
    assert "Constant" not in after
    assert sum(after.values()) < sum(before.values()) or before["BatchNormalization"] == 0
    assert sum(after.values()) <= sum(before.values()) - before["BatchNormalization"]
    acc_before = float(np.mean(np.argmax(first, 1) == labels))
    acc_after = float(np.mean(np.argmax(last, 1) == labels))
    assert acc_before > 0.5  # a trained model on its own test digits
    assert abs(acc_after - acc_before) <= 1 / len(labels)
    assert float(np.mean(np.argmax(first, 1) == np.argmax(last, 1))) >= 1 - 1 / len(labels)


@pytest.mark.parametrize("opset,constants", [(9, False), (11, True), (12, False), (15, False)])
def test_small_builder_mobilenet_at_old_and_new_opsets(opset, constants):
    """MobileNetV2 exported at opset 9-15 (Clip as attributes / inputs), weights as Constant nodes too."""
    from edgeopt.zoo import build_mobilenet_v2, weights_as_constants

    original = build_mobilenet_v2(width_mult=0.35, resolution=32, num_classes=10, opset=opset)
    if constants:
        original = weights_as_constants(original)
    before = ops(original)
    assert before["BatchNormalization"] == 52
    x = np.random.default_rng(opset).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model, _, _ = run_chain(original, x)
    after = ops(model)
    assert after["BatchNormalization"] == 0 and "Constant" not in after
    assert sum(after.values()) == sum(before.values()) - before["Constant"] - 52
    assert after["Clip"] == before["Clip"] == 35


def test_edgeopt_run_on_a_sample_model(tmp_path, digits):
    """The three passes through the real pipeline (checker, ORT, lossless gate, profile), as a user runs them."""
    model = sample("mobilenet_digits")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(model), "output": str(tmp_path / "out.onnx"), "data": str(SAMPLES / "digits_test.npz"),
        "passes": list(CHAIN)}))
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "run", str(recipe), "--format", "json", "--no-measure",
                           "-q"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [s["pass"] for s in doc["stages"]] == ["input", *CHAIN]
    accuracies = {s["fidelity"]["accuracy"] for s in doc["stages"]}
    assert len(accuracies) == 1 and accuracies.pop() > 0.5
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert ops(out)["BatchNormalization"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name,bns", [("resnet50", 53), ("mobilenetv2-1.0-224", 52)])
def test_builder_imagenet_model(name, bns):
    from edgeopt.zoo import ensure_model

    original = onnx.load(str(ensure_model(name, REPO / "build" / "models")))
    assert ops(original)["BatchNormalization"] == bns
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model, _, _ = run_chain(original, x)
    assert ops(model)["BatchNormalization"] == 0
    assert len(model.graph.node) == len(original.graph.node) - bns
