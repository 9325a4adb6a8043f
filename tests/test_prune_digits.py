"""prune_channels on the trained digits nets: exact where it must be, accurate where it can be."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import SAMPLES
from edgeopt.graph.edit import add_initializer, const_array, to_proto
from edgeopt.graph.io import load_model
from edgeopt.profile import profile_model
from edgeopt.prune.core import PruneConfig, analyze_model, prune_model
from edgeopt.verify.fidelity import accuracy
from edgeopt.verify.runtime import make_session, run_batched


def digits(split: str):
    npz = np.load(SAMPLES / f"digits_{split}.npz")
    return {"input": npz["input"]}, npz["labels"]


def outputs(model, feeds):
    return run_batched(make_session(model), model, feeds)[0]


def masked(model: onnx.ModelProto, kept: dict[int, np.ndarray]) -> onnx.ModelProto:
    """The original network with the pruned channels cut at their readers (their weight columns zeroed)."""
    ir_model, analysis = analyze_model(model)
    for con in analysis.consumers:
        info = analysis.info[con.value.name]
        drop = np.setdiff1d(np.arange(info.channels * info.inner), analysis.positions(con.value.name, kept))
        if len(drop):
            w = const_array(con.weight).copy()
            index = [slice(None)] * w.ndim
            index[con.in_axis] = drop
            w[tuple(index)] = 0
            con.node.replace_input_with(1, add_initializer(ir_model.graph, f"{con.weight.name}_masked", w))
    return to_proto(ir_model)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits", "vgg_digits", "resnet_digits_opset11",
                                  "mobilenet_digits_constants"])
def test_pruned_net_computes_what_the_original_computes_without_those_channels(name):
    """Removing channels is exact: same outputs as cutting them at every reader; MACs as the profiler counts."""
    model = load_model(SAMPLES / f"{name}.onnx")
    test, _ = digits("test")
    out = prune_model(model, PruneConfig(ratio=0.3, round_to=8))
    onnx.checker.check_model(out.model, full_check=True)
    assert len(out.pruned_groups) >= 5
    reference = outputs(masked(model, out.kept), test)
    got = outputs(out.model, test)
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert np.max(np.abs(got - reference)) <= 1e-5 * scale
    assert out.macs_before == profile_model(model).totals["macs"]
    assert out.macs_after == profile_model(out.model).totals["macs"] < 0.6 * out.macs_before


@pytest.mark.slow
def test_half_the_macs_on_the_resnet_digits_net_with_reconstruction_costs_under_two_points():
    model = load_model(SAMPLES / "resnet_digits.onnx")
    calib, _ = digits("calib")
    test, labels = digits("test")
    base = accuracy([outputs(model, test)], labels)
    plain = prune_model(model, PruneConfig(ratio=0.3), calib)
    refit = prune_model(model, PruneConfig(ratio=0.3, reconstruct=True), calib)
    macs = profile_model(model).totals["macs"]
    assert profile_model(plain.model).totals["macs"] == profile_model(refit.model).totals["macs"] <= 0.5 * macs
    acc_plain = accuracy([outputs(plain.model, test)], labels)
    acc_refit = accuracy([outputs(refit.model, test)], labels)
    assert base >= 0.98
    assert base - acc_refit <= 0.02, (base, acc_refit)
    assert acc_refit > acc_plain + 0.2, (acc_plain, acc_refit)  # plain l1 without retraining collapses
