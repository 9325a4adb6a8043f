"""quantize_weights bits: auto: per-layer float / float16 / int8 / int4 under a fidelity budget."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgeopt.devices import DEVICE_DIR, load_device
from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.quant.mixed import Budget, Layer, order_moves, search
from edgeopt.recipe.load import parse_recipe

from conftest import record_progress_bars

PASS = get_pass("quantize_weights")
GAIN = 50.0


def gain_model(seed: int = 0) -> onnx.ModelProto:
    """out = MatMul(Relu(MatMul(x, A)), B) + 50 * MatMul(x, S): S's errors reach the output 50 times
    louder than A's and B's, so S is the one sensitive layer. 64x64 weights, seeded."""
    rng = np.random.default_rng(seed)
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 64] x) => (float[N, 64] out) {{
        h = MatMul(x, A)
        r = Relu(h)
        y = MatMul(r, B)
        s = MatMul(x, S)
        loud = Mul(s, gain)
        out = Add(y, loud)
    }}"""
    model = onnx.parser.parse_model(text)
    for node, name in zip(model.graph.node, ["mm_a", "relu", "mm_b", "mm_s", "gain", "add"]):
        node.name = name
    for name in "ABS":
        w = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(w, name))
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(GAIN, np.float32), "gain"))
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_model() -> onnx.ModelProto:
    """Two 3x3 convs of 32 channels on 64x64: compute-bound on any device (75 M ops per layer)."""
    rng = np.random.default_rng(3)
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 16, 64, 64] x) => (float[1, 32, 64, 64] out) {
        c1 = Conv <pads = [1,1,1,1]> (x, W1)
        r1 = Relu(c1)
        out = Conv <pads = [1,1,1,1]> (r1, W2)
    }"""
    model = onnx.parser.parse_model(text)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    model.graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32), "W2")])
    onnx.checker.check_model(model, full_check=True)
    return model


DATA = {"x": np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)}


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].astype(np.float64).ravel()


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def stored_bytes(model) -> int:
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def choices(result) -> dict[str, str]:
    return {n.node: n.figures["choice"] for n in result.notes if "choice" in n.figures}


def test_auto_keeps_the_sensitive_layer_wider_and_the_rest_int4_within_the_budget():
    model = gain_model()
    result = PASS().apply(model, PASS.Params(bits="auto", min_cosine=0.9995), PassContext(data=DATA))
    assert result.modified
    chosen = choices(result)
    assert chosen["mm_s"] in ("float", "float16", "int8")
    assert chosen["mm_a"].startswith("int4") and chosen["mm_b"].startswith("int4")
    # the budget holds on the model written, in onnxruntime, on the calibration data and on fresh inputs
    assert cosine(run(model, DATA), run(result.model, DATA)) >= 0.9995
    fresh = {"x": np.random.default_rng(9).standard_normal((32, 64)).astype(np.float32)}
    assert cosine(run(model, fresh), run(result.model, fresh)) >= 0.999
    # below uniform int8, and the structure says what the notes say
    int8 = PASS().apply(model, PASS.Params(bits=8), PassContext())
    assert stored_bytes(result.model) < stored_bytes(int8.model)
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    assert types["A_quantized"] == types["B_quantized"] == onnx.TensorProto.INT4
    # every layer's note carries its choice, its cost per format and its measured single-layer losses
    note = next(n for n in result.notes if n.node == "mm_s")
    assert set(note.figures["cost"]) >= {"float", "float16", "int8", "int4", "int4_block"}
    loss = note.figures["loss_alone"]
    quiet = next(n for n in result.notes if n.node == "mm_a").figures["loss_alone"]
    assert loss["int4_block"] > 100 * quiet["int4_block"] and loss["int8"] > 100 * quiet["int8"]
    assert loss["int4_block"] > 1 - 0.9995  # why it stays wide: int4 alone breaks the budget ...
    assert note.figures["out_of_reach"] == ["int4"]  # ... so its coarser int4 form is not even run
    assert "cosine" in result.summary and "int4" in result.summary


def test_a_looser_budget_takes_more_and_stays_within_it():
    model = gain_model()
    ref = run(model, DATA)
    tight = PASS().apply(model, PASS.Params(bits="auto", min_cosine=0.9995), PassContext(data=DATA))
    loose = PASS().apply(model, PASS.Params(bits="auto", min_cosine=0.99), PassContext(data=DATA))
    assert stored_bytes(loose.model) < stored_bytes(tight.model)
    assert choices(loose)["mm_s"].startswith("int4")
    assert 0.99 <= cosine(ref, run(loose.model, DATA)) < cosine(ref, run(tight.model, DATA))


def test_a_budget_no_choice_meets_leaves_the_model_unchanged_and_says_so():
    model = gain_model()
    result = PASS().apply(model, PASS.Params(bits="auto", min_cosine=1.0), PassContext(data=DATA))
    assert not result.modified and result.model is model
    assert "left unchanged" in result.summary and "cosine >= 1" in result.summary
    assert set(choices(result).values()) == {"float"}


def test_without_data_the_budget_is_measured_on_seeded_random_inputs():
    model = gain_model()
    result = PASS().apply(model, PASS.Params(bits="auto", min_cosine=0.999), PassContext(input_shapes={"x": [1, 64]}))
    assert result.modified and "seeded random inputs" in result.summary
    assert cosine(run(model, DATA), run(result.model, DATA)) >= 0.998


def test_accuracy_budget_with_labels():
    model = gain_model()
    labels = np.argmax(run(model, DATA).reshape(16, 64), axis=1)
    result = PASS().apply(model, PASS.Params(bits="auto", max_accuracy_drop=0.0),
                          PassContext(data=DATA, labels=labels))
    assert result.modified and "accuracy drop <= 0" in result.summary
    out = run(result.model, DATA).reshape(16, 64)
    assert np.array_equal(np.argmax(out, axis=1), labels)


def test_latency_on_an_fp16_device_without_int8_picks_float16_not_int8():
    """jetson-nano computes fp16 (472 GOPS) and fp32 (236), no int8: an int8 weight computes in fp16
    like a float16 one, so on these compute-bound convs int8 is no faster and float16 wins on fidelity;
    by weight bytes the same layers go to int8 / int4."""
    model = conv_model()
    data = {"x": np.random.default_rng(2).standard_normal((2, 16, 64, 64)).astype(np.float32)}
    device = load_device(str(DEVICE_DIR / "chips" / "jetson-nano.yaml"))  # computes in fp16 and fp32
    assert "int8" not in device.precisions and "fp16" in device.precisions
    fast = PASS().apply(model, PASS.Params(bits="auto", objective="est_latency_ms"),
                        PassContext(data=data, device=device))
    assert set(choices(fast).values()) == {"float16"}
    for note in (n for n in fast.notes if "cost" in n.figures):
        cost = note.figures["cost"]
        assert cost["int8"] == pytest.approx(cost["float16"]) and cost["float16"] < 0.6 * cost["float"]
    small = PASS().apply(model, PASS.Params(bits="auto"), PassContext(data=data, device=device))
    assert all(c.startswith("int") for c in choices(small).values())
    # Myriad X is fp16 only: float32 weights already compute in fp16 there, at the same cost
    myriad = PASS().apply(model, PASS.Params(bits="auto", objective="est_latency_ms"),
                          PassContext(data=data, device=load_device("myriadx")))
    assert not myriad.modified and "no format lowers est_latency_ms" in myriad.summary


def test_device_objective_without_a_device_is_a_skip_with_reason():
    result = PASS().apply(gain_model(), PASS.Params(bits="auto", objective="est_energy_mj"), PassContext(data=DATA))
    assert not result.modified and "needs a device" in result.summary


def test_search_backs_off_when_single_layer_losses_underestimate_the_whole():
    """Two layers each alone within the budget, together not: the verified result takes only one."""
    rng = np.random.default_rng(0)
    originals = {"a": rng.standard_normal(8), "b": rng.standard_normal(8)}
    layers = [Layer(n, {"int8": originals[n] + 1}, {"float": 10.0, "int8": 1.0}) for n in "ab"]
    losses = {(): 0.0, ("a",): 0.004, ("b",): 0.004, ("a", "b"): 0.02}

    def outputs(swapped):  # a cosine of 1 - loss against the reference [1, 0]
        loss = losses[tuple(sorted(swapped))]
        return [np.array([1 - loss, np.sqrt(1 - (1 - loss) ** 2)])]

    outcome = search(layers, originals, outputs, outputs, Budget(min_cosine=0.99))
    assert sum(c == "int8" for c in outcome.choice.values()) == 1
    assert outcome.fidelity["cosine"] == pytest.approx(0.996) and outcome.verifications >= 2
    assert [m.to for m in order_moves(layers)] == ["int8", "int8"]


def test_auto_parameters_are_validated_from_the_recipe():
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"bits": 8, "min_cosine": 0.9}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.quantize_weights: .*bits: auto only"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"bits": "auto", "objective": "latency"}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.quantize_weights\.objective: must be .*est_latency_ms"):
        parse_recipe(doc, Path("r.yaml"))
    doc = {"model": "m.onnx", "passes": [{"quantize_weights": {"bits": "auto", "objective": "est_energy_mj",
                                                               "max_accuracy_drop": 0.01}}]}
    params = parse_recipe(doc, Path("r.yaml")).passes[0].params
    assert params.bits == "auto" and params.objective == "est_energy_mj" and params.max_accuracy_drop == 0.01


def test_bits_auto_marks_its_per_layer_loop_with_one_progress_bar(monkeypatch):
    import edgeopt.quant.mixed as mixed

    calls = record_progress_bars(monkeypatch, mixed)
    PASS().apply(gain_model(), PASS.Params(bits="auto", min_cosine=0.9995), PassContext(data=DATA))
    assert calls == [["bits auto: layer sensitivity", 3, 3]]
