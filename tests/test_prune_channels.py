"""The prune_channels pass: parameters, MACs against the profiler, criteria, reconstruction, real networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeopt.devices import load_device
from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import profile_model
from edgeopt.prune.core import PruneConfig, analyze_model, prune_model
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session

from test_prune_groups import Net, residual_net, weight_shape

PASS = get_pass("prune_channels")


def apply(model, ctx=None, **params):
    return PASS().apply(model, PASS.Params(**params), ctx or PassContext())


def measured(result) -> dict:
    return next(n for n in result.notes if n.node == "(model)").figures


def run(model, x):
    return make_session(model).run(None, {"x": x})[0]


def out_channels(model) -> dict[str, int]:
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"}


def set_weights(model, name: str, array) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))


def get_weights(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_macs_saved_reported_by_the_pass_equal_the_profilers():
    model = residual_net()
    result = apply(model, ratio=0.5)
    figures = measured(result)
    before, after = profile_model(model).totals["macs"], profile_model(result.model).totals["macs"]
    assert figures["macs_before"] == before and figures["macs_after"] == after
    assert figures["macs_saved"] == before - after > 0
    assert f"saved {before - after:,}" in result.summary
    onnx.checker.check_model(result.model, full_check=True)


def test_bad_ratio_is_rejected_with_its_location():
    doc = {"model": "m.onnx", "passes": [{"prune_channels": {"ratio": 1.5}}]}
    with pytest.raises(UserError, match=r"r\.yaml: passes\[0\]\.prune_channels\.ratio: must be in \[0, 1\), got 1\.5"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"prune_channels": {"ratio": {"layer1.*": 0.3, "fc": -0.1}}}]}
    with pytest.raises(UserError, match=r"prune_channels\.ratio\.fc: must be in \[0, 1\), got -0\.1"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"prune_channels": {"criterion": "l3"}}]}
    with pytest.raises(UserError, match=r"prune_channels\.criterion: must be 'l1' or 'l2' or 'bn_scale' or 'apoz' or 'thinet', got 'l3'"):
        parse_recipe(doc, Path("r.yaml"))
    ok = parse_recipe({"model": "m.onnx", "passes": [{"prune_channels": {"round_to": "device", "ratio": {"*": 0.2}}}]},
                      Path("r.yaml"))
    assert ok.passes[0].params.round_to == "device" and ok.passes[0].params.ratio == {"*": 0.2}


def test_round_to_device_uses_the_devices_channel_alignment():
    net = Net()
    r = net.node("Relu", [net.conv("x", 3, 40, "conv1")], ["r1"], "relu1")
    model = net.head(net.conv(r, 40, 24, "conv2"), 24)
    device = load_device("myriadx")
    assert device.channel_alignment == 8
    result = apply(model, PassContext(device=device), ratio=0.3, round_to="device")
    counts = out_channels(result.model)
    # keep 40*0.7=28 -> 32 (a tie, the larger) and 24*0.7=16.8 -> 16: 16 of 64 removed, nearest to 30 %
    assert counts == {"conv1": 32, "conv2": 16}
    with pytest.raises(UserError, match=r"round_to: device needs a `device:` in the recipe"):
        apply(model, ratio=0.3, round_to="device")


def test_data_criteria_and_reconstruction_need_data():
    model = residual_net()
    for params in ({"criterion": "apoz"}, {"criterion": "thinet"}, {"reconstruct": True}):
        with pytest.raises(UserError, match="needs calibration data; add `data:`"):
            apply(model, **params)


def test_exclude_and_per_layer_ratio_globs():
    model = residual_net()
    result = apply(model, ratio={"conv2": 0.5, "conv4": 0.25}, exclude=["conv4"])
    counts = out_channels(result.model)
    assert counts == {"conv1": 8, "conv2": 4, "conv3": 8, "conv4": 16}
    note = next(n for n in result.notes if n.node == "conv4")
    assert note.action == "skipped" and note.reason == "excluded by 'conv4'"
    note = next(n for n in result.notes if n.node == "conv1")
    assert note.action == "skipped" and note.reason == "ratio 0"


def test_min_channels_and_rounding_keep_whole_groups():
    model = residual_net()
    result = apply(model, ratio=0.9, round_to=4, min_channels=6)
    counts = out_channels(result.model)
    assert counts["conv1"] == counts["conv3"] == 8  # 8 channels: 6 rounds up to 8, nothing goes
    assert counts["conv4"] == 8 and counts["conv2"] == 8


def _calibration(n=256, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)


def test_apoz_drops_the_channel_that_is_always_zero_after_relu():
    model = residual_net()
    w, b = get_weights(model, "conv2.w").copy(), get_weights(model, "conv2.b").copy()
    w[3] *= 10  # the biggest filter of conv2 ...
    b[3] = -1000.0  # ... but its ReLU output is always 0
    set_weights(model, "conv2.w", w)
    set_weights(model, "conv2.b", b)
    data = {"x": _calibration()}
    l1 = prune_model(model, PruneConfig(ratio={"conv2": 1 / 8}), data)
    apoz = prune_model(model, PruneConfig(ratio={"conv2": 1 / 8}, criterion="apoz"), data)
    kept_l1 = get_weights(l1.model, next(n for n in l1.model.graph.node if n.name == "conv2").input[1])
    kept_apoz = get_weights(apoz.model, next(n for n in apoz.model.graph.node if n.name == "conv2").input[1])
    assert any(np.array_equal(k, w[3]) for k in kept_l1)
    assert not any(np.array_equal(k, w[3]) for k in kept_apoz)
    # a dead channel's removal changes nothing
    x = _calibration(16, seed=9)
    np.testing.assert_allclose(run(apoz.model, x), run(model, x), rtol=0, atol=1e-5)


def test_thinet_drops_the_channel_the_next_layer_ignores():
    model = residual_net()
    w2, w3 = get_weights(model, "conv2.w").copy(), get_weights(model, "conv3.w").copy()
    w2[5] *= 10  # conv2 channel 5: the largest filter ...
    w3[:, 5] = 0  # ... which conv3 does not read
    set_weights(model, "conv2.w", w2)
    set_weights(model, "conv3.w", w3)
    data = {"x": _calibration()}
    l1 = prune_model(model, PruneConfig(ratio={"conv2": 1 / 8}), data)
    thinet = prune_model(model, PruneConfig(ratio={"conv2": 1 / 8}, criterion="thinet"), data)
    assert weight_shape(thinet.model, "conv3") == [8, 7, 3, 3]
    kept = get_weights(thinet.model, next(n for n in thinet.model.graph.node if n.name == "conv2").input[1])
    assert not any(np.array_equal(k, w2[5]) for k in kept)
    x = _calibration(16, seed=9)
    np.testing.assert_allclose(run(thinet.model, x), run(model, x), rtol=0, atol=1e-5)
    assert np.max(np.abs(run(l1.model, x) - run(model, x))) > 1e-3  # l1 removed a channel that mattered


def test_reconstruction_lowers_the_output_error():
    model = residual_net()
    calib, test = {"x": _calibration(256, seed=3)}, _calibration(128, seed=4)
    reference = run(model, test)
    errors = {}
    for reconstruct in (False, True):
        out = prune_model(model, PruneConfig(ratio=0.5, reconstruct=reconstruct), calib)
        onnx.checker.check_model(out.model, full_check=True)
        errors[reconstruct] = np.linalg.norm(run(out.model, test) - reference) / np.linalg.norm(reference)
        if reconstruct:
            refits = [n for n in out.notes if n.action == "refitted"]
            assert {n.node for n in refits} == {"conv2", "conv3", "conv4", "fc"}
            for n in refits:
                assert n.figures["rel_error_after"] < n.figures["rel_error_before"]
    assert errors[True] < 0.6 * errors[False], errors


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["build_resnet50", "build_mobilenet_v2"])
def test_builder_networks_lose_30_percent_of_channels_in_multiples_of_8(builder):
    import edgeopt.zoo as zoo

    model = getattr(zoo, builder)(resolution=64, calibration_images=2)
    result = apply(model, ratio=0.3, round_to=8)
    onnx.checker.check_model(result.model, full_check=True)
    before, after = out_channels(model), out_channels(result.model)
    assert all(c % 8 == 0 for c in after.values()), {k: c for k, c in after.items() if c % 8}
    removed = sum(before.values()) - sum(after.values())
    assert 0.28 <= removed / sum(before.values()) <= 0.32
    _, analysis = analyze_model(model)
    residual = [g for g in analysis.groups if len(g.sources) >= 2]
    assert len(residual) == (4 if builder == "build_resnet50" else 5)
    for g in residual:  # residual groups are pruned too, the same channels in every layer of the group
        assert len({after[s.node.name] for s in g.sources}) == 1 and after[g.sources[0].node.name] < g.length
    figures = measured(result)
    assert figures["macs_before"] == profile_model(model).totals["macs"]
    assert figures["macs_after"] == profile_model(result.model).totals["macs"]
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    y = make_session(result.model).run(None, {"input": x})[0]
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))


def test_recipe_run_after_fold_batchnorm_verifies_and_reports(tmp_path, write_recipe):
    from edgeopt.pipeline import RunOptions, run_recipe
    from edgeopt.recipe.load import load_recipe

    net = Net()
    c = net.conv("x", 3, 16, "conv1")
    bn = net.node("BatchNormalization", [c, net.w("bn.s", 16), net.w("bn.b", 16), net.w("bn.m", 16),
                                         net.const("bn.v", np.ones(16, np.float32))], ["bn"], "bn")
    r = net.node("Relu", [bn], ["r"], "relu")
    model = net.head(net.conv(r, 16, 16, "conv2"), 16)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=_calibration(64))
    recipe = write_recipe({"model": "m.onnx", "output": "out.onnx", "data": "d.npz", "device": "myriadx",
                           "passes": ["fold_batchnorm",
                                      {"prune_channels": {"ratio": 0.5, "round_to": "device", "reconstruct": True}}]})
    doc = run_recipe(load_recipe(recipe), RunOptions(measure=False))
    stage = doc["stages"][-1]
    assert stage["pass"] == "prune_channels" and doc["ok"]
    assert stage["macs"] == measured_figures(stage)["macs_after"]
    assert doc["stages"][1]["macs"] == measured_figures(stage)["macs_before"]
    assert out_channels(onnx.load(tmp_path / "out.onnx")) == {"conv1": 8, "conv2": 8}
    assert stage["fidelity"]["cosine"] > 0.5


def measured_figures(stage: dict) -> dict:
    return next(n for n in stage["notes"] if n["node"] == "(model)")["figures"]
