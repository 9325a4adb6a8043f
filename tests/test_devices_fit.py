"""Device profiles fitted to measurements: the fit recovers a device it generated, the written YAML is
marked C with priors and rows, the fitter's formula is the profiler's, and every built-in says what it
models and how far it was validated."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import numpy as np

from edgeopt.cli.main import cli
from edgeopt.devices import device_names, load_device
from edgeopt.devices.fitting import TermCache, fit, predict_ms, prior_values, terms_for, with_figures
from edgeopt.devices.loader import aliases
from edgeopt.devices.measurements import TRUTH_CSV, Measurement, matches, read_measurements, usable
from edgeopt.profile.profiler import profile_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [ROOT / "sample_models" / n for n in ("mobilenet_digits.onnx", "resnet_digits.onnx", "vgg_digits.onnx")]


def _conv_net(path: Path, channels: int, depthwise: bool, kernel: int, seed: int) -> Path:
    """A small conv net of one shape class, so the rows tell the classes apart."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "x", 3
    for i in range(3):
        groups = c if depthwise and i else 1
        cout = c if depthwise and i else channels
        k = 1 if kernel == 1 and i else 3 if i == 0 else kernel
        w = rng.normal(size=(cout, c // groups, k, k)).astype(np.float32) * 0.1
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], group=groups, pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, c = f"r{i}", cout
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("fitmodels")
    own = [_conv_net(d / f"net{i}.onnx", ch, dw, k, i)
           for i, (ch, dw, k) in enumerate([(32, False, 3), (64, True, 3), (48, False, 1), (96, True, 3), (16, False, 5)])]
    return own + SAMPLES


def _truth_device():
    """What the 'real device' is: rpi4-ncnn-fp16-4t with figures the fit has to find."""
    base = load_device("rpi4-ncnn-fp16-4t")
    truth = prior_values(base)
    truth.update({"efficiency.conv3x3": truth["efficiency.conv3x3"] * 0.6, "layer_overhead_us": 35.0,
                  "run_overhead_us": 400.0})
    return base, with_figures(base, truth), truth


def _measure(device, paths):
    return [profile_model(onnx.load(str(p)), device).totals["est_latency_ms"] for p in paths]


def test_the_fitter_prices_exactly_what_the_profiler_does(models):
    device = load_device("coral-usb-edgetpu-int8")
    prior = prior_values(device)
    moved = {k: v * (0.7 if k.startswith("efficiency") else 1.6) for k, v in prior.items()}
    moved_device = with_figures(device, moved)
    for path in models[:4]:
        terms = terms_for(path, with_figures(device, prior))
        want = profile_model(onnx.load(str(path)), moved_device).totals["est_latency_ms"]
        assert predict_ms(terms, prior, moved) == pytest.approx(want, rel=1e-9)


def test_calibrate_recovers_the_device_that_made_the_rows(models, tmp_path):
    base, truth_device, truth = _truth_device()
    measured = _measure(truth_device, models)
    prior_err = [abs(p - m) / m for p, m in zip(_measure(base, models), measured)]
    assert max(prior_err) > 0.3  # the prior alone is off: the fit has something to do
    csv_path = tmp_path / "mine.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "latency_ms"])
        for p, ms in zip(models, measured):
            w.writerow([str(p), f"{ms:.6f}"])
    out = tmp_path / "mine.yaml"
    res = CliRunner().invoke(cli, ["calibrate", "rpi4-ncnn-fp16-4t", "--measurements", str(csv_path),
                                   "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["fit"]["rows"] == len(models)
    assert doc["fit"]["within_25"] == 1.0 and doc["fit"]["median_error"] < 0.05
    assert doc["validation"]["loao"]["rows"] == len(models)
    fitted = load_device(str(out))
    assert fitted.layer_overhead_us.mark == "C"
    assert fitted.layer_overhead_us.prior == pytest.approx(base.layer_overhead_us.value, rel=1e-5)
    assert fitted.layer_overhead_us.value == pytest.approx(35.0, rel=0.35)
    assert fitted.fit["rows"][0]["measured_ms"] == pytest.approx(measured[0], rel=1e-5)
    again = _measure(fitted, models)
    assert all(abs(a - m) / m < 0.05 for a, m in zip(again, measured))


def test_calibrate_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,latency_ms\nnothere.onnx,3.0\n")
    res = CliRunner().invoke(cli, ["calibrate", "rpi4", "--measurements", str(bad), "--all-rows"])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    bad.write_text("model,latency_ms\nx.onnx,fast\n")
    res = CliRunner().invoke(cli, ["calibrate", "rpi4", "--measurements", str(bad)])
    assert res.exit_code == 2 and "not a number" in res.output
    res = CliRunner().invoke(cli, ["calibrate", "rpi4"])
    assert res.exit_code == 2 and "--measurements" in res.output


def test_devices_json_says_what_each_profile_models():
    res = CliRunner().invoke(cli, ["devices", "--format", "json"])
    assert res.exit_code == 0, res.output
    profiles = json.loads(res.output)["devices"]
    truth = list(csv.DictReader(TRUTH_CSV.open()))
    device_keys = {r["device_key"] for r in truth} | {"host", "kirin970-npu"}
    runtime_keys = {r["runtime_key"] for r in truth} | {"hiai"}
    seen = set()
    for p in profiles:
        assert {"name", "device", "runtime", "precision", "threads", "validation"} <= set(p)
        assert p["device"] in device_keys and p["runtime"] in runtime_keys, p["name"]
        assert isinstance(p["precision"], list) and p["precision"]
        if p["kind"] != "cpu":
            assert p["threads"] is None, p["name"]
        key = (p["device"], p["runtime"], tuple(p["precision"]), p["threads"])
        assert key not in seen, f"two profiles model {key}"
        seen.add(key)
    assert len(profiles) >= 40


def test_old_names_pick_a_default_variant():
    for old, new in aliases().items():
        assert load_device(old).variant == new and load_device(old).name == old
    assert load_device("coral-edgetpu").device_key == "coral-usb"
    assert load_device("rpi4").name == "rpi4" and load_device("rpi4").variant == "rpi4-ncnn-fp16-4t"


@pytest.mark.parametrize("name", [n for n in device_names() if n != "host"])
def test_builtin_profiles_are_fitted_or_say_they_are_not(name):
    device = load_device(name)
    rows = [r for r in usable(read_measurements(TRUTH_CSV)) if matches(device, r)]
    if not rows:
        assert device.validation.get("rows") == 0
        return
    assert device.validation["rows"] == len(rows)
    assert device.fit["error"]["rows"] == len(rows)
    fitted = [key for key, fig in device.figures() if fig.mark == "C"]
    assert "layer_overhead_us" in fitted and all(fig.prior is not None for _, fig in device.figures() if fig.mark == "C")
    assert {"within_25", "median_error", "worst_error"} <= set(device.validation["loao"] or device.validation["in_sample"])


def test_profile_carries_the_band(tmp_path):
    model = SAMPLES[0]
    res = CliRunner().invoke(cli, ["profile", str(model), "--device", "coral-edgetpu", "--no-measure", "--format", "json"])
    band = json.loads(res.output)["totals"]["est_latency_band"]
    assert band["validated"] and band["rows"] >= 15 and 0 <= band["median_error"] < 1
    res = CliRunner().invoke(cli, ["profile", str(model), "--device", "myriadx", "--no-measure", "--format", "json"])
    assert json.loads(res.output)["totals"]["est_latency_band"]["validated"] is False


def test_edge_tpu_streams_only_the_weights_past_its_cache(models):
    device = load_device("coral-usb-edgetpu-int8")
    small = dataclasses.replace(device, onchip_bytes=dataclasses.replace(device.onchip_bytes, value=20_000))
    prof = profile_model(onnx.load(str(SAMPLES[2])), small)
    weight_bytes = sum(l.get("device_weight_bytes") or 0 for l in prof.layers)
    streamed = prof.totals["dram_bytes"]
    assert weight_bytes > 20_000
    assert weight_bytes - 20_000 <= streamed < weight_bytes  # the first layers' weights stay cached
    assert prof.totals["est_transfer_ms"] > 0  # the input crosses USB
