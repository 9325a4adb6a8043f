"""The recipe's `fidelity: {output, metric}` steers the budgets of quantize_weights bits: auto and
prune_channels ratio: auto (one helper: edgeopt/verify/budget.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgeopt.passes import PassContext, get_pass
from edgeopt.verify.budget import FidelityBudget, Meter
from edgeopt.verify.fidelity import FidelitySpec

from test_prune_groups import Net, weight_shape

QUANT = get_pass("quantize_weights")
PRUNE = get_pass("prune_channels")
LOUD = 100.0


def ort_outputs(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the helper ----------------------------------------------------------------------------------------

def test_meter_reads_the_named_output_with_the_named_metric():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((6, 3, 5)), 100 * rng.standard_normal((6, 4))]
    got = [ref[0] + 0.3 * rng.standard_normal((6, 3, 5)), -ref[1]]
    names = ["seq", "aux"]
    every = Meter(ref, names)(got)
    assert every["cosine"] < -0.9  # aux dominates every output together
    seq = Meter(ref, names, FidelitySpec("seq", "cosine"))(got)
    assert seq["score"] == seq["cosine"] == pytest.approx(cos(ref[0], got[0]), abs=1e-12)
    top1 = Meter(ref, names, FidelitySpec("seq", "top1"))(got)
    agree = float(np.mean(np.argmax(ref[0], -1) == np.argmax(got[0], -1)))  # per position: 18 of them
    assert top1["score"] == top1["top1_agreement"] == pytest.approx(agree)
    mx = Meter(ref, names, FidelitySpec("seq", "max_abs"))(got)
    assert mx["score"] == pytest.approx(1 - np.max(np.abs(ref[0] - got[0])) / max(1.0, np.max(np.abs(ref[0]))))
    budget = FidelityBudget(min_cosine=0.5, spec=FidelitySpec("seq", "top1"))
    assert budget.met(top1, None) == (agree >= 0.5)
    assert budget.describe() == "top-1 agreement >= 0.5 on output 'seq'"
    with pytest.raises(ValueError, match="not among the outputs"):
        Meter(ref, names, FidelitySpec("nope"))


# -- quantize_weights bits: auto ------------------------------------------------------------------------

def two_output_mm() -> onnx.ModelProto:
    """small = x @ A (scale ~1) and big = 100 * (x @ B): every output together is ~all big, so A's errors
    hardly count there; on output 'small' only A's do."""
    rng = np.random.default_rng(0)
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 64] x) => (float[N, 64] small, float[N, 64] big) {
        small = MatMul(x, A)
        b = MatMul(x, B)
        big = Mul(b, loud)
    }"""
    model = onnx.parser.parse_model(text)
    for node, name in zip(model.graph.node, ["mm_a", "mm_b", "loud"]):
        node.name = name
    for name in "AB":
        model.graph.initializer.append(numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), name))
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(LOUD, np.float32), "loud"))
    onnx.checker.check_model(model, full_check=True)
    return model


DATA = {"x": np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)}


def quant_auto(spec: FidelitySpec | None, min_cosine: float):
    model = two_output_mm()
    result = QUANT().apply(model, QUANT.Params(bits="auto", min_cosine=min_cosine),
                           PassContext(data=DATA, fidelity=spec))
    choice = {n.node: n.figures["choice"] for n in result.notes if "choice" in n.figures}
    model_note = next(n for n in result.notes if n.node == "(model)")
    return model, result, choice, model_note


def test_bits_auto_follows_the_named_output():
    # every output (no spec): each on its own, so A's int4 error on 'small' counts as much as B's on 'big'
    # (one cosine over both concatenated was all 'big', and A went to int4)
    model, every, choice, note = quant_auto(None, 0.9995)
    assert not choice["mm_a"].startswith("int4") and not choice["mm_b"].startswith("int4")
    assert note.figures["fidelity_on"] == {"output": None, "metric": "cosine"}
    ref, out = ort_outputs(model, DATA), ort_outputs(every.model, DATA)
    per = {name: cos(ref[name], out[name]) for name in ("small", "big")}
    assert min(per.values()) >= 0.9995
    written = note.figures["written"]
    assert written["outputs"] == pytest.approx(per, abs=1e-6)
    assert written["cosine"] == pytest.approx(min(per.values()), abs=1e-6)
    assert written["worst_output"] == min(per, key=per.get)
    # the same budget on output 'small': the other way round
    model, named, choice, note = quant_auto(FidelitySpec("small", "cosine"), 0.9995)
    assert choice["mm_b"].startswith("int4") and not choice["mm_a"].startswith("int4")
    assert note.figures["fidelity_on"] == {"output": "small", "metric": "cosine"}
    assert "on output 'small'" in named.summary and "metric cosine" in named.summary
    # the figure the pass reports is what onnxruntime computes on that output, independently
    ref, out = ort_outputs(model, DATA), ort_outputs(named.model, DATA)
    assert note.figures["written"]["cosine"] == pytest.approx(cos(ref["small"], out["small"]), abs=1e-6)
    assert cos(ref["small"], out["small"]) >= 0.9995 > cos(ref["big"], out["big"])
    assert f"cosine {cos(ref['small'], out['small']):.5f} on output 'small'" in named.summary


def test_bits_auto_with_top1_bounds_the_agreement_of_the_named_output():
    model, result, choice, note = quant_auto(FidelitySpec("small", "top1"), 1.0)
    assert result.modified and note.figures["fidelity_on"] == {"output": "small", "metric": "top1"}
    ref, out = ort_outputs(model, DATA), ort_outputs(result.model, DATA)
    agree = float(np.mean(np.argmax(ref["small"], -1) == np.argmax(out["small"], -1)))
    assert note.figures["written"]["score"] == note.figures["written"]["top1_agreement"] == agree == 1.0
    assert "top-1 agreement >= 1 on output 'small'" in result.summary
    assert choice["mm_b"].startswith("int4")  # 'big' is not looked at


# -- prune_channels ratio: auto -------------------------------------------------------------------------

def two_branch_net() -> onnx.ModelProto:
    """x -> a1 (16) -> relu -> a2 -> small; x -> b1 (16) -> relu -> b2 -> x100 -> big. Same MACs per branch."""
    net = Net(seed=5)
    ra = net.node("Relu", [net.conv("x", 3, 16, "a1")], ["ra"], "relu_a")
    net.conv(ra, 16, 4, "a2")
    net.node("Identity", ["a2"], ["small"], "id_a")
    rb = net.node("Relu", [net.conv("x", 3, 16, "b1")], ["rb"], "relu_b")
    b2 = net.conv(rb, 16, 4, "b2")
    net.node("Mul", [b2, net.const("loud", np.asarray(LOUD, np.float32))], ["big"], "loud")
    return net.model([("small", ["N", 4, 6, 6]), ("big", ["N", 4, 6, 6])])


FEEDS = {"x": np.random.default_rng(0).standard_normal((48, 3, 6, 6)).astype(np.float32)}


def prune_auto(spec: FidelitySpec | None):
    model = two_branch_net()
    params = PRUNE.Params(ratio="auto", target_macs=0.7, min_cosine=0.95,
                          scan_ratios=[0.25, 0.5, 0.75, 0.875])
    result = PRUNE().apply(model, params, PassContext(data=FEEDS, input_shapes={"x": [1, 3, 6, 6]}, fidelity=spec))
    return model, result, next(n for n in result.notes if n.node == "(model)").figures


@pytest.mark.parametrize("named", [False, True])
def test_ratio_auto_cuts_the_branch_the_budget_does_not_look_at(named):
    spec = FidelitySpec("small", "cosine") if named else None
    model, result, f = prune_auto(spec)
    a1, b1 = weight_shape(result.model, "a1")[0], weight_shape(result.model, "b1")[0]
    assert f["budget_met"]
    ref, out = ort_outputs(model, FEEDS), ort_outputs(result.model, FEEDS)
    if named:
        assert f["target_met"]
        assert b1 < a1  # 'big' is free to lose: its branch goes
        assert f["fidelity_on"] == "output 'small', metric cosine"
        assert "measured on output 'small', metric cosine" in result.summary
        assert "cosine >= 0.95 on output 'small'" in result.summary
        assert f["measured"]["cosine"] == pytest.approx(cos(ref["small"], out["small"]), abs=1e-6)
    else:
        # every output on its own: no branch is free to lose (one cosine over both was ~all 'big', so the
        # small branch went and 'small' fell below the budget unseen); the budget holds on each output
        assert f["fidelity_on"] == "every output (the worst), metric cosine"
        assert min(cos(ref[n], out[n]) for n in ("small", "big")) >= 0.95
        assert f["measured"]["cosine"] == pytest.approx(min(cos(ref[n], out[n]) for n in ("small", "big")), abs=1e-6)
