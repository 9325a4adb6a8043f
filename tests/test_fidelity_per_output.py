"""Fidelity per graph output: a detector whose score maps are 300x smaller than its box maps.

One cosine over every output concatenated is the box maps' cosine: a wrecked score head hides in it. Here
every figure is per output, and checks, budgets and warnings read the worst one (edgeopt/verify/fidelity.py).
The numbers are onnxruntime's, before vs after, on held-out inputs; nothing depends on the CPU's kernels
beyond float32 rounding (weight-only quantization: the convolutions run in float).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeopt.cli.main import cli
from edgeopt.passes import PassContext, get_pass

BOX_SCALE = 200.0
OUTPUTS = ["score_p3", "box_p3", "score_p4", "box_p4"]
QUANT = get_pass("quantize_weights")


def detector(seed: int = 0) -> onnx.ModelProto:
    """x [N, 3, 16, 16] in [0, 1) -> conv 3x3 -> relu (p3, 16x16) -> conv 3x3 stride 2 -> relu (p4, 8x8); at each
    level a 1x1 class-score conv (8 classes, values ~1) and a 1x1 box conv x 200 (values ~100s).

    Channel 0 of p3 is dead on every input (bias -100), and score_p3's weight from it is an outlier (50 where
    the others are ~0.3): it never reaches the output, but it sets a per-tensor scale, so per-tensor int4
    rounds every other score_p3 weight to 0."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, w: np.ndarray, b: np.ndarray, name: str, stride: int = 1) -> str:
        k = w.shape[-1]
        inits.extend([numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(b.astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        return name

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    b1 = 0.1 * rng.standard_normal(32)
    b1[0] = -100.0
    p3 = relu(conv("x", 0.3 * rng.standard_normal((32, 3, 3, 3)), b1, "c1"), "p3")
    p4 = relu(conv(p3, rng.standard_normal((32, 32, 3, 3)) * 1.5 / np.sqrt(288), 0.1 * rng.standard_normal(32),
                   "c2", stride=2), "p4")
    inits.append(numpy_helper.from_array(np.asarray(BOX_SCALE, np.float32), "box_scale"))
    for level, feat in (("p3", p3), ("p4", p4)):
        ws = 0.3 * rng.standard_normal((8, 32, 1, 1))
        if level == "p3":
            ws[0, 0] = 50.0
        conv(feat, ws, 0.1 * rng.standard_normal(8), f"score_{level}")
        box = conv(feat, 0.3 * rng.standard_normal((4, 32, 1, 1)), rng.standard_normal(4), f"box_{level}.conv")
        nodes.append(helper.make_node("Mul", [box, "box_scale"], [f"box_{level}"], name=f"box_{level}"))
    dims = {"score_p3": [8, 16, 16], "box_p3": [4, 16, 16], "score_p4": [8, 8, 8], "box_p4": [4, 8, 8]}
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", *dims[o]]) for o in OUTPUTS],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def images(seed: int, n: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 16, 16)).astype(np.float32)


def run_ort(model, x: np.ndarray) -> dict[str, np.ndarray]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def det(tmp_path):
    onnx.save(detector(), tmp_path / "det.onnx")
    np.savez(tmp_path / "calib.npz", x=images(1))
    np.savez(tmp_path / "held.npz", x=images(2))  # held out: the budget is fitted on calib.npz only
    return tmp_path


def run_json(recipe, *extra):
    result = CliRunner().invoke(cli, ["run", str(recipe), "--format", "json", "--no-measure", *extra])
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def test_a_wrecked_score_head_fails_the_check_and_is_named(det, write_recipe):
    recipe = write_recipe({"model": "det.onnx", "output": "o.onnx", "data": "held.npz",
                           "passes": [{"quantize_weights": {"bits": 4, "granularity": "per_tensor"}}],
                           "checks": {"min_cosine": 0.99}})
    result, doc = run_json(recipe)
    assert result.exit_code == 1 and not (det / "o.onnx").exists()
    # the same pass, by onnxruntime before vs after on the held-out images
    x = images(2)
    quantized = QUANT().apply(detector(), QUANT.Params(bits=4, granularity="per_tensor"), PassContext()).model
    before, after = run_ort(detector(), x), run_ort(quantized, x)
    per = {n: cos(before[n], after[n]) for n in OUTPUTS}
    assert per["score_p3"] < 0.5  # the score head is wrecked ...
    assert min(per[n] for n in OUTPUTS if n != "score_p3") > 0.98  # ... the others are not
    pooled = cos(np.concatenate([before[n].ravel() for n in OUTPUTS]), np.concatenate([after[n].ravel() for n in OUTPUTS]))
    assert pooled > 0.99  # what one cosine over every output said: the check would have passed

    vs_input = doc["stages"][-1]["fidelity"]["vs_input"]
    assert {n: f["cosine"] for n, f in vs_input["outputs"].items()} == pytest.approx(per, abs=1e-5)
    assert vs_input["worst_output"] == "score_p3" and vs_input["cosine"] == pytest.approx(per["score_p3"], abs=1e-5)
    assert doc["checks"] == [{"name": "min_cosine", "limit": 0.99, "value": vs_input["cosine"], "ok": False,
                              "output": "score_p3"}]
    assert "check min_cosine failed" in result.stderr and "on output 'score_p3', limit >= 0.99" in result.stderr
    warning = doc["stages"][-1]["warnings"][0]
    assert "output 'score_p3' cosine" in warning and "(the worst of 4 outputs)" in warning
    assert len(doc["stages"][-1]["warnings"]) == 1  # real data: no random-input warning
    # the table names the worst output's figure and every output's
    table = CliRunner().invoke(cli, ["run", str(recipe), "--no-measure", "--wide"]).stdout
    assert f"{per['score_p3']:.6f}" in table and "score_p3" in table
    assert "cosine per output vs input: score_p3" in table and "(worst)" in table


def test_bits_auto_meets_its_budget_on_every_output_on_held_out_data(det, write_recipe):
    recipe = write_recipe({"model": "det.onnx", "output": "o.onnx", "data": "held.npz", "calibration_data": "calib.npz",
                           "passes": [{"quantize_weights": {"bits": "auto", "granularity": "per_tensor",
                                                            "min_cosine": 0.995}}],
                           "checks": {"min_cosine": 0.995, "max_weight_bytes": 12000}})
    result, doc = run_json(recipe)
    assert result.exit_code == 0, result.stderr
    x = images(2)
    before, after = run_ort(det / "det.onnx", x), run_ort(det / "o.onnx", x)
    per = {n: cos(before[n], after[n]) for n in OUTPUTS}
    assert min(per.values()) >= 0.995  # every output, on images the search never saw
    vs_input = doc["stages"][-1]["fidelity"]["vs_input"]
    assert {n: f["cosine"] for n, f in vs_input["outputs"].items()} == pytest.approx(per, abs=1e-5)
    assert vs_input["worst_output"] == min(per, key=per.get)
    # it still compresses: the outlier head stays wide, the rest goes narrow (43.7 KB of float weights)
    choice = {n["node"]: n["figures"]["choice"] for n in doc["stages"][-1]["notes"]
              if "choice" in n.get("figures", {})}
    assert choice["score_p3"] in ("float", "float16")
    assert sum(c.startswith("int") for c in choice.values()) >= 4
    assert doc["stages"][-1]["weight_bytes"] < 12000


def test_compare_reports_every_output_and_gates_on_the_worst(det):
    quantized = QUANT().apply(detector(), QUANT.Params(bits=4, granularity="per_tensor"), PassContext()).model
    onnx.save(quantized, det / "q.onnx")
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", str(det / "det.onnx"), str(det / "q.onnx"), "--data", str(det / "held.npz"),
                                 "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    x = images(2)
    before, after = run_ort(detector(), x), run_ort(quantized, x)
    per = {n: cos(before[n], after[n]) for n in OUTPUTS}
    assert {n: f["cosine"] for n, f in doc["outputs"].items()} == pytest.approx(per, abs=1e-5)
    assert doc["worst_output"] == "score_p3" and doc["cosine"] == pytest.approx(per["score_p3"], abs=1e-5)
    gated = runner.invoke(cli, ["compare", str(det / "det.onnx"), str(det / "q.onnx"), "--data",
                                str(det / "held.npz"), "--min-cosine", "0.99"])
    assert gated.exit_code == 1 and "on output 'score_p3' is below --min-cosine 0.99" in gated.stderr
    assert "per output" in gated.stdout and "box_p4" in gated.stdout
