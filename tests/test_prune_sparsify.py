"""The sparsify pass: which weights go, global vs per layer, 2:4, and dense vs sparse bytes in the profiler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from edgeopt.devices import DEVICE_DIR, load_device
from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import profile_model
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session

from test_prune_groups import Net, residual_net

PASS = get_pass("sparsify")


def apply(model, **params):
    return PASS().apply(model, PASS.Params(**params), PassContext())


def weights_by_node(model) -> dict[str, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


def test_per_layer_sparsity_zeroes_the_smallest_weights_of_each_layer():
    model = residual_net()
    result = apply(model, sparsity=0.6, scope="per_layer")
    onnx.checker.check_model(result.model, full_check=True)
    before, after = weights_by_node(model), weights_by_node(result.model)
    for name, w in before.items():
        new = after[name]
        assert new.shape == w.shape
        zeroed = new == 0
        assert zeroed.sum() == int(np.floor(0.6 * w.size)), name
        np.testing.assert_array_equal(new[~zeroed], w[~zeroed])  # survivors are untouched
        assert np.abs(w[zeroed]).max() <= np.abs(w[~zeroed]).min()
    assert profile_model(result.model).totals["macs"] == profile_model(model).totals["macs"]


def test_global_scope_uses_one_threshold_over_all_layers():
    model = residual_net()
    result = apply(model, sparsity=0.7)  # scope auto: global for one number
    assert PASS.Params(sparsity=0.7).scope == "global" and PASS.Params(sparsity={"*": 0.5}).scope == "per_layer"
    before, after = weights_by_node(model), weights_by_node(result.model)
    old = np.concatenate([np.abs(w).ravel() for w in before.values()])
    new = np.concatenate([after[n].ravel() for n in before])
    assert (new == 0).sum() == int(np.floor(0.7 * old.size))
    assert old[new == 0].max() <= old[new != 0].min()
    per_layer = {n: float(np.mean(after[n] == 0)) for n in before}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # layers differ under one threshold


def test_two_four_pattern_and_layers_it_cannot_take():
    model = residual_net()
    result = apply(model, pattern="2:4")
    after = weights_by_node(result.model)
    for name in ("conv2", "conv3", "conv4"):
        blocks = np.moveaxis(after[name], 1, -1).reshape(-1, 4)
        assert np.all((blocks == 0).sum(axis=1) == 2), name
    fc = np.moveaxis(after["fc"], 1, -1).reshape(-1, 4)  # Gemm transB=1: input axis 1
    assert np.all((fc == 0).sum(axis=1) == 2)
    note = next(n for n in result.notes if n.node == "conv1")
    assert note.action == "skipped" and "input size 3 is not a multiple of 4" in note.reason
    np.testing.assert_array_equal(after["conv1"], weights_by_node(model)["conv1"])


def test_shared_weight_is_sparsified_once_and_stays_shared():
    net = Net()
    shared = net.w("shared.w", 8, 8, 3, 3)
    a = net.node("Relu", [net.conv("x", 3, 8, "conv0")], ["r0"], "relu0")
    b = net.node("Relu", [net.conv(a, 8, 8, "conv_a", bias=False, weight=shared)], ["ra"], "relu_a")
    model = net.head(net.conv(b, 8, 8, "conv_b", bias=False, weight=shared), 8)
    result = apply(model, sparsity={"conv_*": 0.5})
    nodes = {n.name: n for n in result.model.graph.node}
    assert nodes["conv_a"].input[1] == nodes["conv_b"].input[1] != "shared.w"
    assert np.mean(weights_by_node(result.model)["conv_a"] == 0) == 0.5
    assert np.array_equal(weights_by_node(result.model)["conv0"], weights_by_node(model)["conv0"])
    note = next(n for n in result.notes if n.node == "conv_a")
    assert "shared with conv_b" in note.reason


def test_dense_and_sparse_bytes_and_which_devices_count_them(tmp_path: Path):
    model = residual_net()
    result = apply(model, sparsity=0.75)
    notes = [n for n in result.notes if n.action == "sparsified"]
    dense = sum(n.figures["dense_bytes"] for n in notes)
    sparse = sum(n.figures["sparse_bytes"] for n in notes)
    assert dense == sum(w.nbytes for w in weights_by_node(model).values())
    # 25 % non-zeros at 4 bytes, plus a bitmask of 1 bit per weight
    weights = sum(n.figures["weights"] for n in notes)
    assert sparse == sum(int(n.figures["weights"] - n.figures["zeros"]) * 4 + -(-n.figures["weights"] // 8)
                         for n in notes)
    assert sparse < 0.4 * dense and weights == dense // 4
    biases = sum(i.dims[0] * 4 for i in model.graph.initializer if i.name.endswith(".b"))
    totals = profile_model(result.model).totals
    assert totals["weight_bytes_sparse"] == sparse + biases

    # the profiler counts the sparse bytes only on a device that stores sparse weights
    doc = yaml.safe_load((DEVICE_DIR / "host.yaml").read_text())
    doc.update(name="sparse-host", sparse_weights={"value": True, "mark": "I", "source": "test"})
    path = tmp_path / "sparse-host.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert profile_model(result.model, device=load_device(str(path))).totals["weight_bytes"] == sparse + biases
    assert profile_model(result.model, device=load_device("myriadx")).totals["weight_bytes"] > dense * 0.5


def test_zero_sparsity_changes_nothing_and_more_sparsity_costs_more():
    model = residual_net()
    x = np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)
    reference = make_session(model).run(None, {"x": x})[0]
    same = apply(model, sparsity=0.0)
    np.testing.assert_array_equal(make_session(same.model).run(None, {"x": x})[0], reference)
    errors = []
    for sparsity in (0.2, 0.5, 0.8):
        y = make_session(apply(model, sparsity=sparsity).model).run(None, {"x": x})[0]
        errors.append(float(np.linalg.norm(y - reference) / np.linalg.norm(reference)))
    assert 0 < errors[0] < errors[1] < errors[2], errors


def test_global_scope_with_a_mapping_is_rejected():
    doc = {"model": "m.onnx", "passes": [{"sparsify": {"scope": "global", "sparsity": {"conv*": 0.5}}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.sparsify: sparsify: scope: global takes one sparsity number"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"sparsify": {"sparsity": 1.0}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.sparsify\.sparsity: must be in \[0, 1\), got 1\.0"):
        parse_recipe(doc, Path("r.yaml"))


def test_the_same_weights_go_before_and_after_fold_batchnorm():
    """Magnitudes count the BN scale after the layer, so folding first does not change which weights go."""
    net = Net()
    c = net.conv("x", 3, 8, "conv1")
    scale = np.array([0.05, 4.0, 0.1, 3.0, 1.0, 0.02, 2.0, 0.5], np.float32)
    bn = net.node("BatchNormalization", [c, net.const("bn.s", scale), net.w("bn.b", 8), net.w("bn.m", 8),
                                         net.const("bn.v", np.ones(8, np.float32))], ["bn"], "bn")
    r = net.node("Relu", [bn], ["r"], "relu")
    model = net.head(net.conv(r, 8, 8, "conv2"), 8)
    fold = get_pass("fold_batchnorm")
    folded = fold().apply(model, fold.Params(), PassContext()).model
    for scope in ("per_layer", "global"):
        plain = weights_by_node(apply(model, sparsity=0.5, scope=scope).model)["conv1"] == 0
        after_fold = weights_by_node(apply(folded, sparsity=0.5, scope=scope).model)["conv1"] == 0
        np.testing.assert_array_equal(plain, after_fold)
        assert plain[[0, 5]].mean() > 0.9 and plain[[1, 3]].mean() < 0.2  # small-BN-scale channels lose most
