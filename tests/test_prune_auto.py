"""prune_channels ratio: auto: per-group ratios from the sensitivity scan, to a MAC target within a budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeopt.errors import UserError
from edgeopt.graph.macs import layer_macs
from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import profile_model
from edgeopt.verify.runtime import make_session

from conftest import record_progress_bars
from test_prune_groups import Net, weight_shape

SCAN = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]


def robust_and_sensitive() -> onnx.ModelProto:
    """conv1 (16 channels, all alike: sensitive) -> conv2 (16 channels, 10 nearly dead: robust) -> fc.

    MACs at 6x6: conv1 36*16*27 = 15552, conv2 36*16*16*9 = 82944, fc 80: conv2 carries 84 %."""
    net = Net(seed=3)
    r1 = net.node("Relu", [net.conv("x", 3, 16, "conv1")], ["r1"], "relu1")
    r2 = net.node("Relu", [net.conv(r1, 16, 16, "conv2")], ["r2"], "relu2")
    model = net.head(r2, 16)
    for init in model.graph.initializer:
        if init.name in ("conv2.w", "conv2.b"):
            arr = numpy_helper.to_array(init).copy()
            arr[6:] *= 1e-3
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return model


def data(n=64, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def cosine(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> float:
    ya = make_session(a).run(None, feeds)[0].ravel().astype(np.float64)
    yb = make_session(b).run(None, feeds)[0].ravel().astype(np.float64)
    return float(ya @ yb / np.linalg.norm(ya) / np.linalg.norm(yb))


def macs_of(model: onnx.ModelProto) -> int:
    """Counted here from the weight shapes (6x6 maps, batch 1), independent of the pass's counting."""
    c1, c2 = weight_shape(model, "conv1"), weight_shape(model, "conv2")
    fc = weight_shape(model, "fc")
    return (layer_macs("Conv", [1, 3, 6, 6], c1, [1, c1[0], 6, 6])
            + layer_macs("Conv", [1, c1[0], 6, 6], c2, [1, c2[0], 6, 6]) + fc[0] * fc[1])


def run_auto(model, feeds=None, **params):
    pass_cls = get_pass("prune_channels")
    ctx = PassContext(data=feeds if feeds is not None else data(), input_shapes={"x": [1, 3, 6, 6]})
    return pass_cls().apply(model, pass_cls.Params(ratio="auto", scan_ratios=SCAN, **params), ctx)


def test_auto_prunes_the_robust_group_harder_meets_the_target_and_keeps_the_budget():
    model = robust_and_sensitive()
    before = macs_of(model)
    assert before == 15552 + 82944 + 80 == profile_model(model, input_shapes={"x": [1, 3, 6, 6]}).totals["macs"]
    result = run_auto(model, target_macs=0.45, min_cosine=0.99)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    c1, c2 = weight_shape(pruned, "conv1")[0], weight_shape(pruned, "conv2")[0]
    assert 16 - c2 >= 10 and c2 < c1  # the robust group loses its dead channels and more than conv1
    after = macs_of(pruned)
    assert after <= 0.45 * before
    assert after == profile_model(pruned, input_shapes={"x": [1, 3, 6, 6]}).totals["macs"]
    held_out = data(256, seed=7)  # the budget holds on inputs the pass did not see, too
    assert cosine(model, pruned, data()) >= 0.99 and cosine(model, pruned, held_out) >= 0.98

    model_note = next(n for n in result.notes if n.node == "(model)")
    f = model_note.figures
    assert f["status"] == "met" and f["target_met"] and f["budget_met"]
    assert f["macs_before"] == before and f["macs_after"] == after
    assert f["measured"]["cosine"] == pytest.approx(cosine(model, pruned, data()), abs=1e-5)
    # the in-context rounds and one ratio everywhere were verified at the same target too; the one kept
    # is the best of them on the calibration data, and uniform lost
    labels = [r["allocation"] for r in f["rivals"]] + [f["allocation"]]
    assert any("uniform ratio" in a for a in labels) and any("in context" in a for a in labels)
    uniform = next(r for r in f["rivals"] if "uniform ratio" in r["allocation"])
    assert uniform["value"] <= 0.45 and uniform["measured"]["cosine"] < f["measured"]["cosine"]
    assert all(r["value"] <= 0.45 and r["measured"]["rel_error"] >= f["measured"]["rel_error"] for r in f["rivals"])
    assert f["fidelity_on"] == "every output (the worst), metric cosine" and f["evaluations"] > len(SCAN)
    groups = {n.node: n for n in result.notes if n.node in ("conv1", "conv2")}
    assert groups["conv2"].figures["ratio"] == pytest.approx(1 - c2 / 16)
    assert groups["conv2"].figures["cost_alone"]["rel_error"] < 0.05  # measured alone in the scan
    assert "MACs 98,576 ->" in result.summary and "holds" in result.summary


def test_an_impossible_target_is_reported_and_the_pass_stops_where_the_budget_holds():
    model = robust_and_sensitive()
    result = run_auto(model, target_macs=0.1, min_cosine=0.999)
    assert result.modified
    f = next(n for n in result.notes if n.node == "(model)").figures
    assert f["status"] == "backed off" and not f["target_met"] and f["budget_met"]
    assert f["at_target"]["measured"]["cosine"] < 0.999  # what the target would have cost, with figures
    assert "does not hold" in result.summary and "stopped at the most pruned point that holds it" in result.summary
    assert cosine(model, result.model, data()) >= 0.999
    assert 0.1 * macs_of(model) < macs_of(result.model) < 0.7 * macs_of(model)  # the free cuts are kept

    unchanged = run_auto(model, target_macs=0.1, min_cosine=0.999, on_miss="unchanged")
    assert not unchanged.modified and unchanged.model is model
    assert "model left unchanged" in unchanged.summary


def test_auto_needs_one_target_and_targets_need_auto():
    model = robust_and_sensitive()
    with pytest.raises(UserError, match="needs one target"):
        run_auto(model)
    pass_cls = get_pass("prune_channels")
    with pytest.raises(UserError, match="target_macs applies to ratio: auto"):
        pass_cls().apply(model, pass_cls.Params(ratio=0.5, target_macs=0.5), PassContext())
    with pytest.raises(UserError, match="max_accuracy_drop needs labelled"):
        run_auto(model, target_macs=0.5, max_accuracy_drop=0.01)


def test_a_latency_target_on_the_recipe_device():
    from edgeopt.devices import DEVICE_DIR, load_device

    import dataclasses

    # data-sheet figures with no fixed costs and one-channel lanes: latency follows the channels pruned
    device = dataclasses.replace(load_device(str(DEVICE_DIR / "chips" / "rpi3.yaml")), alignment={"default": 1})
    model = robust_and_sensitive()
    shapes = {"x": [1, 3, 6, 6]}
    before = profile_model(model, device, shapes).totals["est_latency_ms"]
    limit = 0.5 * before
    pass_cls = get_pass("prune_channels")
    result = pass_cls().apply(model, pass_cls.Params(ratio="auto", scan_ratios=SCAN, max_est_latency_ms=limit,
                                                     min_cosine=0.99),
                              PassContext(data=data(), input_shapes=shapes, device=device))
    after = profile_model(result.model, device, shapes).totals["est_latency_ms"]
    assert after <= limit < before
    f = next(n for n in result.notes if n.node == "(model)").figures
    assert f["target"] == "est latency ms" and f["value"] == pytest.approx(after) and f["target_met"]
    assert cosine(model, result.model, data()) >= 0.99
    with pytest.raises(UserError, match="needs a `device:`"):
        run_auto(model, max_est_latency_ms=limit)


def test_the_in_context_rounds_mark_their_loop_with_one_progress_bar(monkeypatch):
    import edgeopt.prune.auto as auto

    calls = record_progress_bars(monkeypatch, auto)
    result = run_auto(robust_and_sensitive(), target_macs=0.45, min_cosine=0.99)
    f = next(n for n in result.notes if n.node == "(model)").figures
    assert [c[0] for c in calls] == ["pruning in context"]
    # two groups: at most 3 re-measured per round, 2 rounds after the scan's; each re-measure one evaluation
    assert 0 < calls[0][2] <= calls[0][1] == 2 * 3 and f["evaluations"] >= len(SCAN) + calls[0][2]
