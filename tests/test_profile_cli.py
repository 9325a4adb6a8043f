"""`edgeopt profile`, `edgeopt devices`, `edgeopt calibrate` through click's CliRunner and a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeopt.cli.main import cli

CONTRACT_TOTALS = {"macs", "params_count", "weight_bytes", "peak_activation_bytes", "est_latency_ms",
                   "est_energy_mj", "measured_latency_ms"}
CONTRACT_LAYER = {"name", "op_type", "macs", "params_count", "weight_bytes", "output_bytes",
                  "arithmetic_intensity", "est_latency_ms", "bound"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", [8, 1, 3, 3]), ("b1", [8]), ("w2", [8, 1, 3, 3]), ("w3", [10, 8]))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    path = tmp_path / "tiny.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_profile_json_contract(tiny_model):
    result = run("profile", tiny_model, "--device", "myriadx", "--format", "json", "--no-measure")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"model", "device", "totals", "layers"}
    assert doc["device"] == "myriadx"
    assert CONTRACT_TOTALS <= set(doc["totals"])
    assert doc["totals"]["macs"] == 32 * 32 * 8 * 9 * 2 + 80
    assert doc["totals"]["measured_latency_ms"] is None
    assert len(doc["layers"]) == 6
    for layer in doc["layers"]:
        assert CONTRACT_LAYER <= set(layer)


def test_profile_measures_and_defaults_to_host(tiny_model):
    result = run("profile", tiny_model, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["device"] == "host"
    assert doc["totals"]["measured_latency_ms"] > 0
    assert doc["totals"]["predicted_to_measured"] > 0
    assert "not calibrated" in result.stderr


def test_profile_per_layer_table_csv_markdown(tiny_model):
    table = run("profile", tiny_model, "--device", "rpi3", "--per-layer", "--no-measure", "--format", "table")
    assert table.exit_code == 0
    assert "layers, most expensive first" in table.stdout and "bound" in table.stdout
    csv_out = run("profile", tiny_model, "--device", "rpi3", "--per-layer", "--no-measure", "--format", "csv")
    assert csv_out.stdout.splitlines()[0] == "figure,key,value"
    assert "MACs,macs,147536" in csv_out.stdout
    layer_header = [l for l in csv_out.stdout.splitlines() if l.startswith("name,op_type,macs")]
    assert layer_header
    md = run("profile", tiny_model, "--device", "rpi3", "--per-layer", "--no-measure", "--format", "markdown")
    assert "| layer | op |" in md.stdout


def test_profile_input_shape_override(tiny_model):
    result = run("profile", tiny_model, "--device", "rpi3", "--input-shape", "input=4x1x32x32", "--no-measure",
                 "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["totals"]["macs"] == 4 * (32 * 32 * 8 * 9 * 2 + 80)
    assert doc["totals"]["input_shapes"] == {"input": [4, 1, 32, 32]}


@pytest.mark.parametrize("args,message", [
    (["--device", "myriad"], "unknown device 'myriad'; did you mean 'myriadx'?"),
    (["--device", "nowhere/board.yaml"], "nowhere/board.yaml: device file not found"),
    (["--input-shape", "image=1x1x32x32"], "input shape for 'image': the model has no such input"),
])
def test_profile_bad_input_exit_2(tiny_model, args, message):
    result = run("profile", tiny_model, "--no-measure", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_profile_bad_device_file_names_the_field(tiny_model, tmp_path):
    bad = tmp_path / "board.yaml"
    bad.write_text("precisions: [fp32]\npeak_gops: {fp32: 10}\n")
    result = run("profile", tiny_model, "--device", bad, "--no-measure")
    assert result.exit_code == 2
    assert f"{bad}: dram_gbps: missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_profile_missing_model(tmp_path):
    result = run("profile", tmp_path / "none.onnx", "--no-measure")
    assert result.exit_code == 2
    assert "none.onnx: model file not found" in result.stderr


def test_devices_list_and_one():
    result = run("devices", "--format", "json")
    assert result.exit_code == 0
    names = [d["name"] for d in json.loads(result.stdout)["devices"]]
    assert "myriadx-openvino-fp16" in names and "host" in names
    one = run("devices", "myriadx", "--format", "json")
    doc = json.loads(one.stdout)
    assert doc["figures"]["onchip_bytes"]["value"] == 589824  # tilingCMXLimit of one stream
    assert "graph_transformer" in doc["figures"]["onchip_bytes"]["source"]
    assert doc["figures"]["dram_gbps"]["value"] is None and doc["figures"]["dram_gbps"]["note"]
    table = run("devices", "rpi3")
    assert "dram_gbps" in table.stdout and "fitted to published rows" in table.stdout and "validation:" in table.stdout
    assert run("devices", "rpi5").exit_code == 2


def test_calibrate_host_tiny_budget(tiny_model, cache_dir):
    result = run("calibrate", "host", "--budget", "0.005", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"conv", "depthwise", "gemm", "elementwise"} <= set(doc["efficiency"])
    assert doc["network_fit"]["error"]["rows"] == 16  # the whole-network step fitted its training networks
    assert {"grouped", "data"} <= set(doc["efficiency"])  # the classes only whole networks price
    timed = {r["model"]: r["measured_ms"] for r in doc["network_fit"]["rows"]}
    # ResNet-18 at 192 is 1.3 GMAC: no CPU core runs it in 2 ms (a dynamic batch fed as 0 ran in 0.06 ms)
    assert timed["resnet18 @192"] > 2.0 and timed["resnet18 @192"] > timed["resnet18 @128"]
    stored = yaml.safe_load((cache_dir / "host.yaml").read_text())
    assert stored["efficiency"] == doc["efficiency"]
    profiled = run("profile", tiny_model, "--format", "json", "--no-measure")
    assert "not calibrated" not in profiled.stderr
    assert json.loads(profiled.stdout)["totals"]["device_calibrated"] is True
    assert run("calibrate", "myriadx").exit_code == 2


def test_profile_subprocess_json_is_clean(tiny_model, cache_dir):
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "profile", str(tiny_model), "--device", "rpi4",
                           "--format", "json", "--no-measure"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["device"] == "rpi4"
    bad = subprocess.run([sys.executable, "-m", "edgeopt", "profile", str(tiny_model), "--device", "rpi9"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("edgeopt: error: unknown device 'rpi9'")


def test_profile_data_fixes_dims_and_picks_the_branch_its_inputs_take(tmp_path):
    # an If on a bool input (silero VAD's sample-rate switch): then 4x8 MatMul, else 4x2
    def branch(name, width):
        w = numpy_helper.from_array(np.ones((4, width), np.float32), f"{name}_w")
        mm = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name="mm")
        return helper.make_graph([mm], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [w])

    node = helper.make_node("If", ["c"], ["y"], name="If_0", then_branch=branch("then", 8), else_branch=branch("else", 2))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                                            helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model_path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 4), np.float32), c=np.array(False))
    result = run("profile", model_path, "--data", data, "--format", "json", "-q")
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["totals"]
    assert totals["macs"] == 4 * 2  # one sample, the else branch the data takes
    assert totals["subgraph_choices"] == ["If_0: condition is False on the given inputs: else branch counted"]
    assert totals["measured_latency_ms"] > 0
