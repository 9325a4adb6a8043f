"""Shared fixtures: a tiny trained-looking classifier built with onnx.helper, recipe writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"


def tiny_classifier(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """input [N,3,8,8] -> Conv 3x3 -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits [N,4]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "conv.w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "conv.b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.scale"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "bn.bias"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "bn.mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn.var"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    return path


@pytest.fixture
def write_recipe(tmp_path: Path):
    """write_recipe({...}) -> path of a recipe YAML in tmp_path."""

    def write(doc: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def record_progress_bars(monkeypatch, module) -> list[list]:
    """Replace `module.steps` (edgeopt.progress.steps as imported there) by a recorder: one
    [label, total, advanced] per bar the code opens, so a test can check what a loop reports."""
    import contextlib

    calls: list[list] = []

    @contextlib.contextmanager
    def steps(label, total):
        calls.append([label, total, 0])

        def advance(k=1, **kwargs):
            calls[-1][2] += k
        yield advance

    monkeypatch.setattr(module, "steps", steps)
    return calls


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make `--dist loadgroup` group again under pytest 9: xdist 3.8 appends "@group" to `item._nodeid`,
    which pytest 8 read as the node id; pytest 9 reads `item._id`, so the suffix never reached the scheduler
    and every xdist_group spread over the workers. Runs after xdist's hook (trylast) and copies the suffix."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        grouped = getattr(item, "_nodeid", None)
        if isinstance(grouped, str) and grouped != item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(grouped)
