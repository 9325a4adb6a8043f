"""convert_fp16 on tiny graphs: float16 weights, float32 inputs/outputs, blocked ops, onnxruntime numbers."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeopt.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.recipe.load import parse_recipe
from edgeopt.verify.runtime import make_session
from test_quant_weights import run, stored_bytes, toy_model

pytest.importorskip("onnxconverter_common")


def apply(model, **params):
    cls = get_pass("convert_fp16")
    return cls().apply(model, cls.Params(**params), PassContext())


@pytest.mark.parametrize("constants", [False, True])
def test_weights_halve_io_stays_float32_and_numbers_hold(constants):
    model = toy_model(opset=11 if constants else 13, constants=constants)
    result = apply(model)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in out.graph.initializer] + [a.t for n in out.graph.node if n.op_type == "Constant"
                                                    for a in n.attribute]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    if not constants:
        assert stored_bytes(out) * 2 == stored_bytes(model)
    ref = run(model)
    err = np.abs(run(out) - ref).max()
    assert 0 < err < 2e-3 * np.abs(ref).max() * 10
    assert "9 nodes converted" in result.summary


def test_excluded_nodes_and_blocked_ops_stay_float32():
    model = toy_model()
    result = apply(model, exclude=["conv_0"], op_block_list=["MatMul"])
    out = result.model
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["W1"] == types["M"] == onnx.TensorProto.FLOAT  # weights of float32 nodes stay float32
    assert types["W3"] == onnx.TensorProto.FLOAT16
    reasons = {n.node: n.reason for n in result.notes}
    assert reasons["conv_0"] == "kept float32: excluded by 'conv_0'"
    assert reasons["matmul_8"] == "kept float32: MatMul has no float16 support"
    assert np.abs(run(out) - run(model)).max() < 2e-2


def test_quantized_models_keep_float32_scales():
    model = get_pass("quantize_weights")().apply(toy_model(), get_pass("quantize_weights").Params(
        min_elements=0, scale_dtype="float32", biases="float32"),
                                                 PassContext()).model
    out = apply(model).model
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: t for t in out.graph.initializer}
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 5 and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in dq)
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq)
    assert not any(n.op_type == "Cast" and n.input[0] in inits for n in out.graph.node)
    assert np.abs(run(out) - run(model)).max() < 2e-2


def test_already_float16_is_left_unchanged():
    once = apply(toy_model()).model
    again = apply(once)
    assert not again.modified and again.model is once and "already float16" in again.summary


def test_bad_parameter_rejected_with_location():
    doc = {"model": "m.onnx", "passes": [{"convert_fp16": {"max_finite_val": 70000}}]}
    with pytest.raises(UserError, match=r"passes\[0\]\.convert_fp16\.max_finite_val: must be in \(0, 65504\]"):
        parse_recipe(doc, Path("r.yaml"))


def test_input_read_by_unnamed_nodes_converts():
    """onnxconverter-common names its Casts after the nodes they feed: two unnamed readers of one
    input used to get two Casts with one output name, a graph that is not SSA."""
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8, 6, 6] x) => (float[N, 16, 6, 6] y) {
        a = Conv <pads = [1,1,1,1]> (x, W)
        b = Conv <pads = [1,1,1,1]> (x, W)
        y = Add(a, b)
    }""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W"))
    feeds = {"x": rng.standard_normal((2, 8, 6, 6)).astype(np.float32)}
    result = apply(model)
    assert result.modified, result.summary
    onnx.checker.check_model(result.model, full_check=True)
    assert all(not n.name for n in model.graph.node)  # the input model is left as it was
    ref, got = (make_session(m).run(None, feeds)[0] for m in (model, result.model))
    assert 0 < np.abs(got - ref).max() < 2e-3 * np.abs(ref).max()


def attention_scale_model(scale: bool = True) -> onnx.ModelProto:
    """What PyTorch's exporter writes for attention: MatMul -> Add -> Transpose -> MatMul at fixed shapes,
    with (scale) the head size read off the shape, Cast to float, Sqrt and a division before the Transpose."""
    rng = np.random.default_rng(5)
    scaling = """
        shape = Shape(a)
        last = Constant <value = int64[1] {2}> ()
        size = Gather(shape, last)
        sizef = Cast <to = 1> (size)
        root = Sqrt(sizef)
        scaled = Div(a, root)""" if scale else """
        scaled = Identity(a)"""
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 14]>
    g (float[2, 5, 16] x) => (float[5, 2, 32] y) {{
        m = MatMul(x, W1)
        a = Add(m, B1){scaling}
        t = Transpose <perm = [1, 0, 2]> (scaled)
        y = MatMul(t, W2)
    }}""")
    for name, shape in (("W1", (16, 64)), ("B1", (64,)), ("W2", (64, 32))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), name))
    return model


def test_float_casts_inside_the_float16_part_become_float16_casts():
    """The converter turned every float value into float16 but left Cast(to=FLOAT): onnxruntime refused
    the model ("Type Error"), so every PyTorch transformer was left unchanged."""
    model = attention_scale_model()
    result = apply(model)
    assert result.modified, result.summary
    onnx.checker.check_model(result.model, full_check=True)
    casts = {n.name or n.output[0]: next(a.i for a in n.attribute if a.name == "to")
             for n in result.model.graph.node if n.op_type == "Cast"}
    assert sum(to == onnx.TensorProto.FLOAT16 for to in casts.values()) == 2  # the head size and the input
    assert sum(to == onnx.TensorProto.FLOAT for to in casts.values()) == 1  # the output edge only
    feeds = {"x": np.random.default_rng(6).standard_normal((2, 5, 16)).astype(np.float32)}
    ref, got = (make_session(m).run(None, feeds)[0] for m in (model, result.model))
    assert 0 < np.abs(got - ref).max() < 4e-3 * np.abs(ref).max()


def test_float16_sessions_survive_onnxruntimes_nchwc_pass():
    """onnxruntime 1.32's NCHWc layout pass killed the process (SIGSEGV) when a session opened this float16
    MatMul -> Add -> Transpose [1, 0, 2] -> MatMul at fixed shapes; the model gets the workaround, and the
    check runs in a child so a crash fails the test."""
    import subprocess
    import sys

    from edgeopt.graph.session import disabled_optimizers, nchwc_crash

    converted = apply(attention_scale_model(scale=False)).model
    assert disabled_optimizers(converted) == ["NchwcTransformer"]
    assert "moves the batch axis into MatMul" in nchwc_crash(converted)
    assert disabled_optimizers(attention_scale_model(scale=False)) == []  # the float32 original does not crash
    code = ("import sys, numpy as np, onnx\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from test_quant_fp16 import apply, attention_scale_model\n"
            "from edgeopt.verify.runtime import make_session\n"
            "out = apply(attention_scale_model(scale=False)).model\n"
            "y = make_session(out).run(None, {'x': np.ones((2, 5, 16), np.float32)})[0]\n"
            "assert y.shape == (5, 2, 32) and np.isfinite(y).all()\n"
            "print('ran')\n")
    child = subprocess.run([sys.executable, "-c", code, "", str(Path(__file__).parent)], capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0 and "ran" in child.stdout, (child.returncode, child.stderr[-500:])


def transpose_into_matmul(perm, dtype="float16", into="A", body=False) -> onnx.ModelProto:
    """x -> Reshape -> Transpose(perm) -> MatMul (the Transpose into its first input A, or its second B);
    body: the same inside an If's then branch."""
    rank = len(perm)
    dims = [2, 3, 5, 16][-rank:]
    moved = [dims[p] for p in perm]
    other = [8, moved[-1]] if into == "A" else [*moved[:-2], 4, moved[-2]]
    product = "y = MatMul(t, w)" if into == "A" else "y = MatMul(w, t)"
    out = [*moved[:-1], 8] if into == "A" else [*moved[:-2], 4, moved[-1]]
    text = {"float16": "float16", "float32": "float"}[dtype]
    x, y = (f"{text}[{', '.join(map(str, shape))}]" for shape in (dims, out))
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 14]>
    g ({x} x) => ({y} y) {{
        s = Constant <value = int64[{rank}] {{{', '.join(map(str, dims))}}}> ()
        a = Reshape(x, s)
        t = Transpose <perm = [{', '.join(map(str, perm))}]> (a)
        {product}
    }}""")
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(other[::-1] if into == "A" else other).astype(dtype)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    if body:
        graph, kind = model.graph, model.graph.output[0].type.tensor_type.elem_type
        then = onnx.helper.make_graph(list(graph.node), "then", [], list(graph.output), list(graph.initializer))
        zero = onnx.numpy_helper.from_array(np.zeros(out, dtype), "zero")
        otherwise = onnx.helper.make_graph([onnx.helper.make_node("Constant", [], ["z"], value=zero)], "else", [],
                                           [onnx.helper.make_tensor_value_info("z", kind, out)])
        outer = onnx.helper.make_graph(
            [onnx.helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=otherwise)], "g",
            [graph.input[0], onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
            [onnx.helper.make_tensor_value_info("out", kind, out)])
        model = onnx.helper.make_model(outer, opset_imports=list(model.opset_import), ir_version=8)
    return model


# (perm, dtype, into, body): a float16 Transpose that moves the batch axis into MatMul's first input crashes
# onnxruntime 1.32 (all but the If body, which did not crash on 1.32 and is covered anyway); the rest do not
# and keep the defaults.
CRASHING = [([1, 0, 2], "float16", "A", False), ([1, 2, 0], "float16", "A", False),
            ([1, 2, 0, 3], "float16", "A", False), ([1, 2, 3, 0], "float16", "A", False),
            ([1, 0, 2], "float16", "A", True)]
SAFE = [([1, 0, 2], "float32", "A", False), ([0, 2, 1, 3], "float16", "A", False),
        ([1, 0, 2, 3], "float16", "A", False), ([0, 2, 1], "float16", "A", False),
        ([1, 0, 2], "float16", "B", False), ([2, 0, 1], "float16", "A", False)]


@pytest.mark.parametrize("case", CRASHING + SAFE, ids=lambda c: f"{''.join(map(str, c[0]))}-{c[1]}-{c[2]}"
                                                               f"{'-body' if c[3] else ''}")
def test_the_nchwc_workaround_applies_to_the_crashing_pattern_only(case):
    from edgeopt.graph.session import disabled_optimizers

    model = transpose_into_matmul(*case)
    onnx.checker.check_model(model, full_check=True)
    assert disabled_optimizers(model) == (["NchwcTransformer"] if case in CRASHING else [])


def test_sessions_open_both_ways():
    """The graphs that keep the NCHWc pass open and run with onnxruntime's defaults; those with the pattern
    open and run through make_session (in a child, so a crash fails the test instead of killing pytest)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, onnx, onnxruntime as ort\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from test_quant_fp16 import CRASHING, SAFE, transpose_into_matmul\n"
            "from edgeopt.verify.runtime import make_session\n"
            "for case in SAFE + CRASHING:\n"
            "    model = transpose_into_matmul(*case)\n"
            "    feeds = {'x': np.ones([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],"
            " case[1])}\n"
            "    if case[3]:\n"
            "        feeds['c'] = np.array(True)\n"
            "    session = make_session(model) if case in CRASHING else ort.InferenceSession("
            "model.SerializeToString(), providers=['CPUExecutionProvider'])\n"
            "    assert np.isfinite(session.run(None, feeds)[0]).all()\n"
            "print('ran', len(SAFE + CRASHING))\n")
    child = subprocess.run([sys.executable, "-c", code, "", str(Path(__file__).parent)], capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0 and f"ran {len(SAFE + CRASHING)}" in child.stdout, (child.returncode,
                                                                             child.stderr[-500:])


def test_an_output_the_model_also_reads_inside_stays_float16_inside():
    """BERT exports return the hidden states and read them on (classifier head): the converter's Cast to
    float32 in front of that output left the inside reader on float32, declared float16."""
    rng = np.random.default_rng(7)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 16] hidden, float[2, 3] logits) {
        m = MatMul(x, W1)
        hidden = Add(m, B1)
        first = Gather <axis = 1> (hidden, idx)
        logits = MatMul(hidden, W2)
        unused = Identity(first)
    }""")
    for name, shape in (("W1", (8, 16)), ("B1", (16,)), ("W2", (16, 3))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), name))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 1], np.int64), "idx"))
    result = apply(model)
    assert result.modified, result.summary
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == [onnx.TensorProto.FLOAT] * 2
    feeds = {"x": rng.standard_normal((2, 8)).astype(np.float32)}
    for ref, got in zip(*(make_session(m).run(None, feeds) for m in (model, result.model))):
        assert 0 < np.abs(got - ref).max() < 4e-3 * np.abs(ref).max()


def test_a_size_computed_in_float16_that_breaks_the_model_leaves_it_unchanged():
    """A dim read off the shape and passed through float (as exporters do for sizes) rounds 4097 to 4096
    in float16: the converted model loads but cannot run. The probe says so; nothing wrong is written."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 4097] x) => (float[4097] y) {
        shape = Shape(x)
        last = Constant <value = int64[1] {1}> ()
        size = Gather(shape, last)
        sizef = Cast <to = 1> (size)
        sizei = Cast <to = 7> (sizef)
        y = Reshape(x, sizei)
    }""")
    result = apply(model)
    assert not result.modified and result.model is model
    assert "the float16 model is not usable (fails in onnxruntime" in result.summary
