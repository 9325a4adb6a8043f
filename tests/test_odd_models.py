"""Every pass through `edgeopt run` on odd graphs: each stage verifies (checker, onnxruntime, outputs)
or the pass leaves the model unchanged with a reason; no pass crashes, nothing prints a traceback.

- shared: one weight and bias read by two unnamed Convs (onnxconverter-common once made it non-SSA)
- flagged: an If on a scalar bool graph input, Convs inside both branches, a fixed batch of 2
- sequence: 3-D MatMul MLP with free batch and sequence dims
- old_grouped: opset 11, grouped Conv, BatchNormalization, Clip-as-ReLU6 with constant bounds
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgeopt.cli.main import cli
from edgeopt.passes import pass_names

RNG = np.random.default_rng(0)


def _model(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def odd_models() -> dict[str, onnx.ModelProto]:
    w = RNG.standard_normal((16, 8, 3, 3)) * 0.3
    return {
        "shared": _model("""<ir_version: 8, opset_import: ["" : 13]>
            g (float[N, 8, 12, 12] x) => (float[N, 16, 12, 12] y) {
                a = Conv <pads = [1,1,1,1]> (x, W, B)
                b = Conv <pads = [1,1,1,1]> (x, W, B)
                y = Add(a, b)
            }""", {"W": w, "B": RNG.standard_normal(16) * 0.1}),
        "flagged": _model("""<ir_version: 8, opset_import: ["" : 13]>
            g (float[2, 8, 12, 12] x, bool flag) => (float[2, 16, 12, 12] y) {
                y = If (flag) <
                    then_branch = t () => (float[2, 16, 12, 12] o) { o = Conv <pads = [1,1,1,1]> (x, W) },
                    else_branch = e () => (float[2, 16, 12, 12] o2) { o2 = Conv <pads = [1,1,1,1]> (x, W2) }>
            }""", {"W": w, "W2": RNG.standard_normal((16, 8, 3, 3)) * 0.3}),
        "sequence": _model("""<ir_version: 8, opset_import: ["" : 13]>
            g (float[N, T, 64] x) => (float[N, T, 10] y) {
                h = MatMul(x, M1)
                r = Relu(h)
                y = MatMul(r, M2)
            }""", {"M1": RNG.standard_normal((64, 128)) * 0.1, "M2": RNG.standard_normal((128, 10)) * 0.1}),
        "old_grouped": _model("""<ir_version: 7, opset_import: ["" : 11]>
            g (float[1, 8, 16, 16] x) => (float[1, 16, 8, 8] y) {
                a = Conv <pads = [1,1,1,1], group = 2> (x, W)
                b = BatchNormalization (a, S, Bb, Mm, V)
                c = Clip (b, lo, hi)
                y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (c)
            }""", {"W": RNG.standard_normal((16, 4, 3, 3)) * 0.3, "S": RNG.uniform(0.5, 1.5, 16),
                   "Bb": RNG.standard_normal(16) * 0.1, "Mm": RNG.standard_normal(16) * 0.1,
                   "V": RNG.uniform(0.5, 1.5, 16), "lo": np.array(0.0), "hi": np.array(6.0)}),
    }


SHAPES = {"shared": {"x": [2, 8, 12, 12]}, "flagged": {}, "sequence": {"x": [2, 5, 64]}, "old_grouped": {}}
# quantize_static auto times the host; mode all keeps the test fast and exercises the whole quantizer
PARAMS = {"quantize_static": {"mode": "all"}, "prune_channels": {"ratio": 0.25}}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_pass_verifies_or_skips_on_odd_models(name, tmp_path):
    onnx.save(odd_models()[name], tmp_path / f"{name}.onnx")
    recipe = {"model": f"{name}.onnx", "output": f"{name}.out.onnx", "input_shapes": SHAPES[name],
              "passes": [{p: PARAMS[p]} if p in PARAMS else p for p in sorted(pass_names())]}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "r.yaml"), "--format", "json", "--no-measure", "-q"],
                                catch_exceptions=False)
    assert result.exit_code in (0, 3), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 3:  # verification caught a pass: it must name it, in one line
        pytest.fail(f"a pass produced an unverifiable model on {name}: {result.output.strip()}")
    doc = json.loads(result.stdout)
    stages = doc["stages"]
    assert [s["pass"] for s in stages[1:]] == sorted(pass_names())
    for stage in stages[1:]:
        assert stage["fidelity"]["cosine"] is not None and stage["fidelity"]["cosine"] > 0.5, stage["pass"]
    onnx.checker.check_model(onnx.load(tmp_path / f"{name}.out.onnx"), full_check=True)


def test_host_latency_is_measured_at_a_fixed_batch(tmp_path):
    """A model whose batch is fixed at 2 is timed on 2 samples (batch 1 does not fit its input)."""
    onnx.save(odd_models()["flagged"], tmp_path / "flagged.onnx")
    (tmp_path / "r.yaml").write_text(json.dumps({"model": "flagged.onnx", "output": "o.onnx", "passes": ["simplify"]}))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "r.yaml"), "--format", "json", "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert all(s["measured_latency_ms"] > 0 for s in stages)
