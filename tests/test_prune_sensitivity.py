"""Sensitivity scan and its proposal, as a library and as `edgeopt sensitivity`."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from edgeopt.cli.main import cli
from edgeopt.passes import PassContext, get_pass
from edgeopt.prune.core import PruneConfig
from edgeopt.prune.sensitivity import Budget, propose, scan

from conftest import record_progress_bars
from test_prune_groups import residual_net


def half_dead_net() -> onnx.ModelProto:
    """conv4 has 8 dead channels out of 16: pruning half of it costs nothing, anything else costs."""
    model = residual_net()
    for init in model.graph.initializer:
        if init.name in ("conv4.w", "conv4.b"):
            arr = numpy_helper.to_array(init).copy()
            arr[::2] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return model


def feeds(n=64, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def test_scan_measures_each_group_alone_and_the_proposal_takes_the_free_one():
    model = half_dead_net()
    config = PruneConfig(ratio=0.0, balance=False)
    result, evaluate = scan(model, config, [0.25, 0.5], feeds())
    by = {(t.name, t.keep): t for t in result.trials}
    assert set(by) == {("conv1", 6), ("conv1", 4), ("conv2", 6), ("conv2", 4), ("conv4", 12), ("conv4", 8)}
    assert by[("conv4", 8)].rel_error < 1e-6 and by[("conv4", 8)].cosine > 0.999999
    assert all(t.rel_error > 0.05 for k, t in by.items() if k[0] != "conv4")
    assert by[("conv1", 4)].macs_saved > by[("conv1", 6)].macs_saved > 0
    assert [f["layer"] for f in result.frozen] == ["fc"]

    proposal = propose(model, result, evaluate, config, Budget(min_cosine=0.9999))
    assert proposal.met and proposal.ratios == {"conv4": 0.5}
    assert proposal.measured["cosine"] >= 0.9999
    # the proposed ratios, given to the pass, rebuild the same network
    pass_cls = get_pass("prune_channels")
    again = pass_cls().apply(model, pass_cls.Params(ratio=proposal.ratios), PassContext())
    figures = next(n for n in again.notes if n.node == "(model)").figures
    assert figures["macs_after"] == proposal.macs_after < proposal.macs_before


def test_a_loose_budget_prunes_more_than_a_tight_one():
    model = half_dead_net()
    config = PruneConfig(ratio=0.0, balance=False)
    result, evaluate = scan(model, config, [0.25, 0.5], feeds())
    tight = propose(model, result, evaluate, config, Budget(min_cosine=0.9999))
    loose = propose(model, result, evaluate, config, Budget(min_cosine=0.5))
    assert loose.met and loose.measured["cosine"] >= 0.5
    assert loose.macs_saved > tight.macs_saved


def test_sensitivity_command_json_and_bad_input(tmp_path):
    model_path, data_path = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(half_dead_net(), model_path)
    np.savez(data_path, x=feeds()["x"])
    runner = CliRunner()
    result = runner.invoke(cli, ["sensitivity", str(model_path), "--data", str(data_path), "--ratios", "0.5",
                                 "--min-cosine", "0.9999", "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {row["layer"] for row in doc["layers"]} == {"conv1", "conv2", "conv4"}
    assert doc["proposal"]["ratios"] == {"conv4": 0.5} and doc["proposal"]["met"] is True
    assert "prune_channels" in doc["proposal"]["recipe"]

    bad = runner.invoke(cli, ["sensitivity", str(model_path), "--ratios", "0.5,1.5"])
    assert bad.exit_code == 2 and "every ratio must be in (0, 1)" in bad.output
    bad = runner.invoke(cli, ["sensitivity", str(model_path), "--criterion", "apoz"])
    assert bad.exit_code == 2 and "need calibration data: give --data or --calib" in bad.output
    bad = runner.invoke(cli, ["sensitivity", str(model_path), "--data", str(data_path), "--max-accuracy-drop", "0.01"])
    assert bad.exit_code == 2 and "--max-accuracy-drop needs labelled data" in bad.output


def test_the_scan_marks_its_loop_with_one_progress_bar_and_prints_nothing_off_a_terminal(monkeypatch, capsys):
    import edgeopt.prune.sensitivity as sensitivity

    scan(half_dead_net(), PruneConfig(ratio=0.0, balance=False), [0.5], feeds())  # the real bar: not a tty
    assert capsys.readouterr().err == ""
    calls = record_progress_bars(monkeypatch, sensitivity)
    result, _ = scan(half_dead_net(), PruneConfig(ratio=0.0, balance=False), [0.5], feeds())
    groups = len({t.group for t in result.trials})
    assert calls == [["sensitivity scan", groups, groups]] and groups == 3
