"""The run pipeline: load -> passes -> verify -> profile -> checks -> write.

Every stage is verified (checker, onnxruntime load, fidelity against the
previous stage and the input) and profiled on each of the recipe's devices.
Nothing is written unless every pass verified and every check passed.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from edgeopt import __version__
from edgeopt.devices import calibration_warning, load_device
from edgeopt.devices.validation import band
from edgeopt.checks import describe_failure, evaluate_checks
from edgeopt.errors import CheckFailed, OutOfMemory, UserError, VerificationError
from edgeopt.graph.io import read_model, save_model
from edgeopt.graph.shapes import data_dims, fix_input_shapes, graph_inputs, refresh_shapes, resolve_input_shapes
from edgeopt.invariants import lossless_macs_problem, random_input_warning, wreck_warning
from edgeopt.passes import PassContext, get_pass
from edgeopt.profile import measure_latency, profile_on_devices
from edgeopt.profile.counting import MAC_OPS
from edgeopt.recipe.load import Recipe
from edgeopt.stage_cache import StageCache, arrays_digest, first_key, next_key
from edgeopt.recipe.values import did_you_mean
from edgeopt.verify.check import ModelInvalid, check_model
from edgeopt.verify.fidelity import FIGURES, FidelitySpec, accuracy, compare, output_scale
from edgeopt.verify.inputs import Inputs, distribution_problem, load_data, random_inputs
from edgeopt.verify.runtime import make_session, ort_message, run_batched, static_batch

LOSSLESS_TOLERANCE = 1e-4  # max abs error relative to the output scale: float32 rounding (DESIGN.md)
# A model that holds float16 tensors computes (part of) its graph in float16: a lossless rewrite
# (folding a float16 BN into float16 weights) matches it to float16 rounding, about 4 ulps of the scale.
LOSSLESS_TOLERANCE_FLOAT16 = 4e-3


def lossless_tolerance(*models: onnx.ModelProto) -> float:
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if any(t.data_type in half for m in models for t in m.graph.initializer):
        return LOSSLESS_TOLERANCE_FLOAT16
    return LOSSLESS_TOLERANCE


@dataclass
class RunOptions:
    output: Path | None = None
    keep_stages: Path | None = None
    devices: list[str] | None = None  # overrides the recipe's
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # override the recipe's
    measure: bool = True
    log: Callable[[str], None] = lambda message: None
    cache: StageCache | None = None  # pass results by content (tune): a repeated pass prefix is read, not rerun
    layers: bool = False  # the document carries the last stage's per-layer profile per device (for reports)


VERIFY_MACS_BUDGET = 2e9  # random verification batch: about this many MACs per stage (2 to 8 samples)
MEASURE_SECONDS = 0.5  # latency measurement budget per stage


def _profile_record(model: onnx.ModelProto, devices, shapes, feeds=None, layers: dict | None = None) -> dict:
    """The contract figures of one stage: counts on the first device, estimates on each.
    `layers`, when given, receives each device's per-layer rows (keyed by device name, "" for none)."""
    record: dict = {}
    per_device = {}
    targets = devices or [None]
    for i, (device, prof) in enumerate(zip(targets, profile_on_devices(model, targets, shapes, feeds))):
        totals = prof.totals
        if i == 0:
            for key in ("macs", "params_count", "weight_bytes", "peak_activation_bytes",
                        "est_latency_ms", "est_energy_mj"):
                record[key] = totals.get(key)
            # the MAC invariant compares counts only where every MAC layer was counted exactly
            record["macs_exact"] = all(l["counted"] for l in prof.layers if l["op_type"] in MAC_OPS)
        if layers is not None:
            layers[device.name if device is not None else ""] = prof.layers
        if device is not None:
            per_device[device.name] = {"est_latency_ms": totals.get("est_latency_ms"),
                                       "est_energy_mj": totals.get("est_energy_mj"),
                                       "est_latency_band": totals.get("est_latency_band")}
            if i == 0:
                record["est_latency_band"] = totals.get("est_latency_band")
    if per_device:
        record["devices"] = per_device
    return record


def _fix_dims(model: onnx.ModelProto, fixed: dict, given: dict) -> onnx.ModelProto:
    """The model with `fixed` dims; dims taken from the data are dropped again if onnxruntime cannot
    load the model with them (silero VAD's untaken 8 kHz branch fails its own inference at 576 samples)."""
    candidate = fix_input_shapes(model, fixed)
    if fixed == given:
        return candidate
    try:
        make_session(candidate, threads=1)
        return candidate
    except Exception:  # onnxruntime raises its own types: keep only the dims the user gave
        return fix_input_shapes(model, given) if given else model


def _measure(session, model: onnx.ModelProto, inputs: Inputs, enabled: bool) -> float | None:
    """Latency of one batch: batch 1, or the model's fixed batch."""
    if not enabled:
        return None
    return measure_latency(session, inputs.first(static_batch(model) or 1), max_seconds=MEASURE_SECONDS)


def _verify(model: onnx.ModelProto, label: str, inputs: Inputs):
    """Checker, ORT load and a run; a failure names `label` and what went wrong.

    The session has one intra-op thread, as the host profile models, so the
    same session serves verification and the latency measurement.
    """
    try:
        check_model(model)
    except ModelInvalid as exc:
        raise VerificationError(f"{label} produced a model that fails the ONNX checker: {exc}") from None
    try:
        session = make_session(model, threads=1)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationError(f"{label} produced a model that onnxruntime cannot load: {ort_message(exc)}") from None
    try:
        outputs = run_batched(session, model, inputs.feeds)
    except Exception as exc:
        raise VerificationError(f"{label} produced a model that fails in onnxruntime: {ort_message(exc)}") from None
    return session, outputs


def _fidelity(prev_outputs, first_outputs, outputs, labels, spec: FidelitySpec, names: list[str]) -> dict:
    """Fidelity against the previous stage and the input, per graph output (verify.fidelity.compare): each
    output's figures in `outputs`, the worst over the outputs the recipe's `fidelity:` looks at under the
    old keys, `worst_output` by its metric. `all_max_abs_error` (every output, against the previous stage) is
    what the lossless check uses."""
    per_position = spec.metric == "top1"
    vs_prev = compare(prev_outputs, outputs, per_position, names, spec.output, spec.metric, labels)
    vs_input = compare(first_outputs, outputs, per_position, names, spec.output, spec.metric)
    fid = {k: vs_prev.get(k) for k in FIGURES}
    fid["accuracy"] = accuracy(outputs, labels, names, spec.output)
    fid["worst_output"] = vs_prev.get("worst_output")
    fid["outputs"] = {n: _figures(f) for n, f in (vs_prev.get("outputs") or {}).items()}
    fid["vs_input"] = {**{k: vs_input.get(k) for k in FIGURES}, "worst_output": vs_input.get("worst_output"),
                       "outputs": {n: _figures(f) for n, f in (vs_input.get("outputs") or {}).items()}}
    if spec.output or spec.metric != "cosine":
        fid["on"] = {"output": spec.output, "metric": spec.metric}
    errors = [f.get("max_abs_error") for f in (vs_prev.get("outputs") or {}).values()]
    fid["all_max_abs_error"] = None if not errors or None in errors else max(errors)
    problem = vs_prev.get("problem") or vs_input.get("problem")
    if problem:
        fid["problem"] = problem
    return fid


def _figures(per_output: dict) -> dict:
    """One output's figures for the JSON: accuracy only where it applies."""
    return {k: v for k, v in per_output.items() if k in FIGURES or (k == "accuracy" and v is not None)}


def _input_fidelity(outputs, labels, names: list[str], spec: FidelitySpec) -> dict:
    """The input stage against itself: every figure exact, accuracy per output where it applies."""
    same = compare(outputs, outputs, spec.metric == "top1", names, spec.output, spec.metric, labels)
    per = {n: {**_figures(f), "cosine": 1.0, "max_abs_error": 0.0} for n, f in same["outputs"].items()}
    top1 = 1.0 if any(f.get("top1_agreement") is not None for f in per.values()) else None
    return {"cosine": 1.0, "max_abs_error": 0.0, "top1_agreement": top1,
            "accuracy": accuracy(outputs, labels, names, spec.output),
            "worst_output": spec.output or (names[0] if names else None), "outputs": per}


def _lossless_problem(label: str, prev_outputs, fid: dict, names: list[str], tolerance: float) -> str | None:
    """Each output of a lossless stage within `tolerance` of its own scale (a score map next to a box map
    100x its size is held to its own rounding, not the box map's)."""
    for name, prev in zip(names, prev_outputs):
        error = fid["outputs"][name]["max_abs_error"]
        limit = tolerance * output_scale([prev])
        if error > limit:
            where = f" on output {name!r}" if len(names) > 1 else ""
            return (f"{label} is lossless but its outputs diverged: max abs error {error:.3g}{where} > {limit:.3g} "
                    f"({tolerance:g} of the output scale)")
    return None


def _check_random_inputs(recipe: Recipe, model: onnx.ModelProto) -> None:
    """The recipe's random_inputs name inputs of the model, with distributions their types can take."""
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    for name, dist in recipe.random_inputs.items():
        where = f"{recipe.path}: random_inputs.{name}"
        if name not in inputs:
            raise UserError(f"{where}: {name!r} is not an input of {recipe.model.name}{did_you_mean(name, inputs)}; "
                            f"its inputs are {list(inputs)}")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(inputs[name].type.tensor_type.elem_type))
        problem = distribution_problem(dist, dtype)
        if problem:
            raise UserError(f"{where}: {problem}")


def run_recipe(recipe: Recipe, options: RunOptions) -> dict:
    """Run the recipe and return the report document (CONTRACT: JSON output).

    Raises VerificationError (exit 3) or CheckFailed (exit 1, carrying the
    document) when nothing may be written.
    """
    log = options.log
    output = options.output or recipe.output
    if output is None:
        raise UserError(f"{recipe.path}: no output path; add `output:` to the recipe or pass --output")
    if output.resolve() == recipe.model.resolve():
        raise UserError(f"{output}: the output would overwrite the input model; choose another output path")
    devices = [load_device(name) for name in options.devices or recipe.devices]
    for device in devices:
        warning = calibration_warning(device)
        if warning:
            log(f"edgeopt: warning: {warning}")

    model, external = read_model(recipe.model)  # external data in: external data out
    try:
        check_model(model)
    except ModelInvalid as exc:
        raise UserError(f"{recipe.model}: the input model fails the ONNX checker: {exc}") from None
    output_names = [o.name for o in model.graph.output]
    if recipe.fidelity.output is not None and recipe.fidelity.output not in output_names:
        raise UserError(f"{recipe.path}: fidelity.output: {recipe.fidelity.output!r} is not an output of "
                        f"{recipe.model.name}; its outputs are {output_names}")
    _check_random_inputs(recipe, model)
    overrides = {**recipe.input_shapes, **options.input_shapes}
    data = load_data(recipe.data, model) if recipe.data else None
    shapes = resolve_input_shapes(model, overrides, data.feeds if data else None)
    # The passes see static dims: the given ones, and the free dims the data's arrays fix (batch stays free).
    fixed = {**(data_dims(model, data.feeds) if data else {}), **{k: shapes[k] for k in overrides}}
    if fixed:
        model = _fix_dims(model, fixed, {k: shapes[k] for k in overrides})
    record = {"stage": 0, "pass": "input", "params": {}}
    last_layers: dict = {}  # the latest stage's per-layer rows, kept with options.layers
    record.update(_profile_record(model, devices, shapes, data.feeds if data else None,
                                  last_layers if options.layers else None))
    if data:
        inputs = data
    else:
        free_batch = int(max(2, min(8, VERIFY_MACS_BUDGET // max(record.get("macs") or 1, 1))))
        inputs = random_inputs(model, shapes, recipe.seed, free_batch=free_batch,
                               distributions=recipe.random_inputs, fill_fixed_batch=True)
    log(f"[0/{len(recipe.passes)}] input {recipe.model.name}: verifying on {inputs.batch} samples of {inputs.source}")
    try:
        session = make_session(model, threads=1)
        first_outputs = run_batched(session, model, inputs.feeds)
    except Exception as exc:
        raise UserError(f"{recipe.model}: onnxruntime cannot run the input model: {ort_message(exc)}") from None
    record["measured_latency_ms"] = _measure(session, model, inputs, options.measure)
    record["fidelity"] = _input_fidelity(first_outputs, inputs.labels, output_names, recipe.fidelity)
    del session
    records = [record]
    # Data-driven passes fit on calibration_data when the recipe has it, so `data` stays held out.
    calibration = load_data(recipe.calibration_data, model) if recipe.calibration_data else (
        inputs if recipe.data else None)
    # Only the stage a pass works on is kept (memory: a stage of ResNet-50 is 100 MB), all of them
    # with --keep-stages.
    prev_model, prev_outputs = model, first_outputs
    kept = [model] if options.keep_stages else []
    del model
    gc.collect()
    ctx = PassContext(data=calibration.feeds if calibration else None,
                      labels=calibration.labels if calibration else None,
                      input_shapes=shapes, device=devices[0] if devices else None, seed=recipe.seed,
                      fidelity=recipe.fidelity, random_inputs=recipe.random_inputs or None)
    key = None
    if options.cache is not None:
        settings = {"shapes": shapes, "seed": recipe.seed, "device": devices[0].name if devices else None,
                    "fidelity": [recipe.fidelity.output, recipe.fidelity.metric],
                    "calibration": arrays_digest(ctx.data, ctx.labels).hex()}
        if recipe.random_inputs:  # what passes without data draw their inputs from
            settings["random_inputs"] = {k: v.describe() for k, v in recipe.random_inputs.items()}
        key = first_key(prev_model, settings)
    for spec in recipe.passes:
        cls = get_pass(spec.name)
        label = f"pass {spec.name} (passes[{spec.index}])"
        started = time.perf_counter()
        cached = None
        if key is not None:
            key = next_key(key, spec.name, spec.raw_params)
            cached = options.cache.get(key)
        try:
            result = cached or cls().apply(prev_model, spec.params, ctx)
        except OutOfMemory as exc:  # what it needs cannot fit here: one line, exit 2 (graph/activations.py)
            raise OutOfMemory(f"{label}: {exc}") from None
        except Exception as exc:  # a pass must skip what it cannot handle; reaching here is a bug
            if os.environ.get("EDGEOPT_DEBUG"):
                raise
            raise VerificationError(
                f"{label} failed on this model ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                "nothing was written. This is a bug in edgeopt: please report it with the model "
                "(EDGEOPT_DEBUG=1 shows the traceback), and leave the pass out meanwhile") from None
        seconds = time.perf_counter() - started
        if key is not None and cached is None:
            options.cache.put(key, result)
        prev_model = None  # the pass's input is not needed any more: free it before onnxruntime loads the result
        # A pass's onnx_ir graph is full of reference cycles (nodes <-> values) that hold the old
        # model's tensors until the cyclic collector runs: collect now, not after the next 300 MB.
        gc.collect()
        refresh_shapes(result.model)  # no stale value_info or output dims survive a pass
        session, outputs = _verify(result.model, label, inputs)
        fid = _fidelity(prev_outputs, first_outputs, outputs, inputs.labels, recipe.fidelity, output_names)
        if fid.get("problem"):
            raise VerificationError(f"{label}: {fid['problem']}")
        if cls.lossless:
            problem = _lossless_problem(label, prev_outputs, fid, output_names, lossless_tolerance(result.model))
            if problem:
                raise VerificationError(problem)
        record = {"stage": len(records), "pass": spec.name, "params": spec.raw_params}
        last_layers = {}
        record.update(_profile_record(result.model, devices, shapes, inputs.feeds,
                                      last_layers if options.layers else None))
        warnings = []
        if cls.lossless:
            error, warning = lossless_macs_problem(label, records[-1], record, result.folded_macs)
            if error:
                raise VerificationError(error + "; nothing was written")
            warnings.append(warning)
        else:
            warnings.append(wreck_warning(label, fid, cls.advice, recipe.fidelity.metric))
            if not recipe.data:
                warnings.append(random_input_warning(label, inputs.batch, recipe.random_inputs))
        record["warnings"] = [w for w in warnings if w]
        for warning in record["warnings"]:
            log(f"edgeopt: warning: {warning}")
        record["measured_latency_ms"] = _measure(session, result.model, inputs, options.measure)
        del session
        gc.collect()
        record["fidelity"] = fid
        record["summary"] = result.summary
        record["seconds"] = round(seconds, 3)
        if key is not None:
            record["cached"] = cached is not None
        record["notes"] = [note.as_dict() for note in result.notes]
        records.append(record)
        prev_model, prev_outputs = result.model, outputs
        if options.keep_stages:
            kept.append(result.model)
        log(f"[{len(records) - 1}/{len(recipe.passes)}] {spec.name}: {result.summary or 'done'} ({seconds:.2f} s)")

    checks = evaluate_checks(recipe.checks, records)
    doc = {
        "edgeopt_version": __version__,
        "recipe": str(recipe.path) if recipe.path else None,
        "model": str(recipe.model),
        "output": str(output),
        "device": [d.name for d in devices] if len(devices) > 1 else (devices[0].name if devices else None),
        "data": inputs.source,
        "device_bands": {d.name: band(d) for d in devices},
        "ok": all(c["ok"] for c in checks),
        "stages": records,
        "checks": checks,
    }
    if options.layers:
        doc["layers"] = last_layers  # {device name: per-layer rows of the last stage}
    if not doc["ok"]:
        failed = [c for c in checks if not c["ok"]]
        raise CheckFailed("; ".join(describe_failure(c) for c in failed) + "; nothing was written", doc)
    for record, stage_model in zip(records, kept):
        save_model(stage_model, options.keep_stages / f"{record['stage']:02d}_{record['pass']}.onnx", external)
    save_model(prev_model, output, external)
    log(f"wrote {output}")
    return doc
