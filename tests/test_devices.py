"""Device profiles: every built-in loads, every figure has a source or a note, bad files fail clearly."""

from __future__ import annotations

import pytest
import yaml

from edgeopt.devices import DEVICE_DIR, OP_CLASSES, device_names, load_device
from edgeopt.errors import UserError

REQUIRED = ["myriadx", "myriad2", "jetson-xavier", "jetson-nano", "kirin970", "snapdragon820", "mali-t628",
            "rpi3", "rpi4", "coral-edgetpu", "host"]


def test_all_required_profiles_exist():
    from edgeopt.devices.loader import aliases

    assert set(REQUIRED) <= set(device_names()) | set(aliases())


@pytest.mark.parametrize("name", REQUIRED)
def test_every_figure_has_a_source_or_a_note(name):
    device = load_device(name)
    for key, fig in device.figures():
        if key == "cores" and fig.value is None:
            continue  # optional, only the host gives it
        if fig.value is not None:
            assert fig.source or fig.note, f"{name}: {key} has a value but no source"
        else:
            assert fig.note, f"{name}: {key} is null without a note"
    for cls in OP_CLASSES:
        assert 0 < device.efficiency_for(cls) <= 1
    assert device.channel_alignment >= 1
    assert device.peak_ops_per_s(device.default_precision) > 0
    assert device.dram_bytes_per_s > 0


def test_raw_yaml_files_mark_their_figures():
    paths = [DEVICE_DIR / f"{n}.yaml" for n in device_names()] + sorted((DEVICE_DIR / "chips").glob("*.yaml"))
    for path in paths:
        data = yaml.safe_load(path.read_text())
        for p, fig in data["peak_gops"].items():
            assert isinstance(fig, dict) and ("source" in fig or "note" in fig), f"{path.name}: peak_gops.{p}"


def test_seed_figures():
    mx = load_device("myriadx")
    assert mx.precisions == ("fp16",)
    assert mx.onchip_capacity == 589_824  # tilingCMXLimit: (19 slices / 2 streams // 2) x 128 KiB + 64 KiB
    assert mx.channel_alignment == 8
    assert mx.compute_precision("int8") == "fp16"  # int8 weights on an fp16-only device
    assert mx.compute_precision("fp32") == "fp16"
    assert load_device("jetson-xavier").alignment_for("int8") == 32
    assert load_device("coral-edgetpu").compute_precision("fp32") == "int8"
    assert load_device("jetson-xavier").compute_precision("int4") == "int8"


def test_unknown_name_suggests():
    with pytest.raises(UserError, match=r"unknown device 'myriad'; did you mean 'myriadx'\?"):
        load_device("myriad")


def test_own_yaml_file(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text("name: board\nprecisions: [fp32]\npeak_gops: {fp32: 10}\ndram_gbps: 2\nalignment: 4\n")
    device = load_device(str(path))
    assert device.name == "board" and device.channel_alignment == 4
    assert device.peak_ops_per_s("fp32") == 10e9


@pytest.mark.parametrize("text,message", [
    ("precisions: [fp32]\ndram_gbps: 2\n", "peak_gops: missing"),
    ("precisions: [fp32]\npeak_gops: {fp32: 10}\n", "dram_gbps: missing"),
    ("precisions: [fp32]\npeak_gops: {fp32: -1}\ndram_gbps: 2\n", "peak_gops.fp32: value must be > 0"),
    ("precisions: [fp64]\npeak_gops: {fp32: 1}\ndram_gbps: 2\n", "precisions: unknown precision 'fp64'"),
    ("precisions: [fp32]\npeak_gops: {fp32: 1}\ndram_gbps: 2\nefficency: {conv: 0.5}\n",
     "efficency: unknown field; did you mean 'efficiency'?"),
    ("precisions: [fp32]\npeak_gops: {fp32: 1}\ndram_gbps: 2\nefficiency: {conv: 2}\n",
     "efficiency.conv: 2 is a fraction of peak"),
    ("precisions: [fp32]\npeak_gops: {fp32: 1}\ndram_gbps: fast\n", "dram_gbps: value must be a number"),
    ("precisions: [fp32\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_device_file_names_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_device(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_device_file(tmp_path):
    with pytest.raises(UserError, match="device file not found"):
        load_device(str(tmp_path / "nope.yaml"))


def test_host_uses_calibration_from_cache(tmp_path, monkeypatch):
    from edgeopt.devices.hostinfo import cpu_signature

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path))
    assert load_device("host").calibrated is False
    (tmp_path / "host.yaml").write_text(yaml.safe_dump({
        "cpu": cpu_signature(), "efficiency": {"conv": 0.4, "depthwise": 0.05}, "dram_gbps": 7.5,
        "layer_overhead_us": 3.0, "run_overhead_us": 12.0}))
    host = load_device("host")
    assert host.calibrated
    assert host.efficiency_for("conv") == 0.4 and host.efficiency["conv"].mark == "C"
    assert host.dram_bytes_per_s == 7.5e9 and host.overhead_s == pytest.approx(3e-6)
    assert host.run_overhead_s == pytest.approx(12e-6)
    assert host.peak_gops["fp32"].mark == "I"  # the GEMM did not beat the static figure: kept
    (tmp_path / "host.yaml").write_text(yaml.safe_dump({
        "cpu": cpu_signature(), "peak_gops_fp32": 100.0, "int8_speedup": 1.5}))
    host = load_device("host")
    assert host.peak_ops_per_s("fp32") == 100e9 and host.peak_gops["fp32"].mark == "C"
    assert host.peak_ops_per_s("int8") == pytest.approx(150e9)
    # calibrated on another machine: ignored
    (tmp_path / "host.yaml").write_text(yaml.safe_dump({"cpu": "other", "efficiency": {"conv": 0.4}}))
    assert load_device("host").calibrated is False
