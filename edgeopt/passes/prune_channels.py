"""prune_channels: remove whole output channels of Conv / Gemm / MatMul layers, and everything that reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx

from edgeopt.errors import UserError
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.prune.auto import Target, auto_prune, describe
from edgeopt.prune.core import PruneConfig, prune_model
from edgeopt.prune.macs import total_macs
from edgeopt.prune.sensitivity import Budget

Criterion = Literal["l1", "l2", "bn_scale", "apoz", "thinet"]


@dataclass
class Params:
    ratio: float | dict[str, float] | Literal["auto"] = param(
        0.3, "fraction of channels to remove in each group; or a mapping of layer-name glob -> fraction "
             "(first matching glob wins, unmatched layers are kept; add '*' for a default); or `auto`: "
             "per-group ratios from a sensitivity scan that meet target_macs or max_est_latency_ms within "
             "min_cosine / max_accuracy_drop", ge=0, lt=1)
    criterion: Criterion = param(
        "l1", "which channels go: l1 / l2 = smallest weight norm; bn_scale = smallest BatchNormalization "
              "gamma; apoz = most often zero after the ReLU (needs data); thinet = least reconstruction "
              "error of the next layer (needs data)")
    round_to: int | Literal["device"] = param(
        1, "keep a multiple of this many channels; `device` = the recipe device's channel alignment", ge=1)
    min_channels: int = param(1, "never keep fewer channels than this in a group", ge=1)
    exclude: list[str] = param(default_factory=list, help="layer-name globs whose channels are never pruned")
    reconstruct: bool = param(
        False, "refit the layers that read pruned channels by least squares on the calibration data, so "
               "their outputs match the unpruned network's (needs data)")
    max_samples: int = param(256, "calibration samples used by apoz, thinet and reconstruct", ge=1)
    balance: bool = param(
        True, "with one global ratio, even out the rounding so the network-wide fraction removed is "
              "closest to the ratio")
    target_macs: float | None = param(
        None, "ratio: auto: fraction of the input's MACs to keep (0.5 = 2x fewer)", gt=0, le=1)
    max_est_latency_ms: float | None = param(
        None, "ratio: auto: estimated latency on the recipe's first device to reach", gt=0)
    min_cosine: float | None = param(
        None, "ratio: auto: output cosine against the pass's input on the calibration data that must hold "
              "(default 0.99 without labels); on the recipe's fidelity output, and with its metric top1 the "
              "top-1 agreement, with max_abs 1 - max abs error / output scale", ge=-1, le=1)
    max_accuracy_drop: float | None = param(
        None, "ratio: auto: accuracy drop on the labelled calibration data that must hold (0.01 = 1 point; "
              "default 0.01 with labels)", ge=0, le=1)
    scan_ratios: list[float] = param(
        default_factory=lambda: [0.25, 0.5, 0.75], help="ratio: auto: ratios each group is scanned at alone",
        gt=0, lt=1)
    on_miss: Literal["best", "unchanged"] = param(
        "best", "ratio: auto, when the budget does not hold at the target: `best` = stop at the most pruned "
                "point that holds it, `unchanged` = prune nothing")


@register
class PruneChannels(Pass):
    name = "prune_channels"
    summary = "Remove whole output channels of Conv/Gemm layers; tied channels go together"
    description = (
        "Structured pruning on the ONNX graph: weight tensors shrink and MACs drop. A channel is removed "
        "from the layer that produces it and from everything that reads it: a BatchNormalization, the "
        "next Conv's or Gemm's input channels, depthwise convs (their group count follows), Flatten / "
        "Reshape then Gemm (one column per channel and spatial position), elementwise ops with "
        "per-channel constants. Channels tied by a residual Add / Mul, a Concat or a shared weight form "
        "one group and are pruned together. A reader the pass cannot follow (a Reshape that splits "
        "channels, a Split along channels, a grouped conv, a graph output) freezes its group, and the "
        "notes say which and why. Run it after fold_batchnorm; BNs still present are handled. Without "
        "retraining, accuracy holds only with `reconstruct: true` (calibration data); "
        "`edgeopt sensitivity MODEL --data D.npz` proposes per-layer ratios within a fidelity budget. "
        "`ratio: auto` does that inside the pass: each group is pruned alone at scan_ratios and measured "
        "on the calibration data (reconstructed when `reconstruct: true`); then a few rounds re-measure every "
        "group's next cut on the network as pruned so far and take the cheapest squared output error per MAC "
        "saved until target_macs (or max_est_latency_ms on the device) is met, the last cut eased to the most "
        "channels that still meet it. That allocation, the scan's own greedy and one uniform ratio are "
        "verified at the target against min_cosine / max_accuracy_drop (on the recipe's fidelity output and "
        "metric), the best on the calibration data is kept and a few verified exchanges refine it; if it fails, the summary gives the figures at the "
        "target and the pass stops at the most pruned point that holds the budget (on_miss: best) or "
        "prunes nothing (on_miss: unchanged). Notes give every group's ratio and its cost measured alone."
    )
    lossless = False
    advice = "a lower ratio, `reconstruct: true` with calibration data, or per-layer ratios from `edgeopt sensitivity MODEL --data D.npz`"
    Params = Params

    def apply(self, model: onnx.ModelProto, params: Params, ctx: PassContext) -> PassResult:
        round_to = params.round_to
        if round_to == "device":
            if ctx.device is None:
                raise UserError("prune_channels: round_to: device needs a `device:` in the recipe "
                                "(or give a number, e.g. round_to: 8)")
            round_to = int(ctx.device.channel_alignment)
        auto = params.ratio == "auto"
        targets = [k for k in ("target_macs", "max_est_latency_ms", "min_cosine", "max_accuracy_drop")
                   if getattr(params, k) is not None]
        if targets and not auto:
            raise UserError(f"prune_channels: {targets[0]} applies to ratio: auto; set `ratio: auto` or drop it")
        if auto:
            return _apply_auto(model, params, round_to, ctx)
        if params.criterion in ("apoz", "thinet") and ctx.data is None:
            raise UserError(f"prune_channels: criterion {params.criterion} needs calibration data; "
                            "add `data:` (an .npz of inputs) to the recipe")
        if params.reconstruct and ctx.data is None:
            raise UserError("prune_channels: reconstruct: true needs calibration data; add `data:` "
                            "(an .npz of inputs) to the recipe")
        config = PruneConfig(ratio=params.ratio, criterion=params.criterion, round_to=round_to,
                             min_channels=params.min_channels, exclude=list(params.exclude),
                             reconstruct=params.reconstruct, max_samples=params.max_samples,
                             balance=params.balance)
        out = prune_model(model, config, ctx.data, ctx.input_shapes, ctx.seed)
        groups = out.pruned_groups
        frozen = [p for p in out.plans if not p.group.prunable]
        saved = out.macs_saved
        share = saved / out.macs_before if out.macs_before else 0.0
        notes = list(out.notes)
        notes.append(NodeNote("(model)", "-", "measured", "MAC layers (Conv, Gemm, MatMul) before and after", {
            "macs_before": out.macs_before, "macs_after": out.macs_after, "macs_saved": saved,
            "channels_before": out.channels_before, "channels_removed": out.channels_removed}))
        prunable = sum(p.group.length * len(p.group.sources) for p in out.plans if p.group.prunable)
        pct = 100 * out.channels_removed / prunable if prunable else 0.0
        summary = (f"removed {out.channels_removed} of {prunable} prunable channels ({pct:.1f}%; "
                   f"{out.channels_before} in all) in {len(groups)} groups; MACs {out.macs_before:,} -> "
                   f"{out.macs_after:,} (saved {saved:,}, {100 * share:.1f}%)")
        if frozen:
            summary += f"; {len(frozen)} group{'s' if len(frozen) > 1 else ''} frozen (see notes)"
        return PassResult(out.model, bool(groups), notes, summary)


def _apply_auto(model: onnx.ModelProto, params: Params, round_to: int, ctx: PassContext) -> PassResult:
    """ratio: auto: the target and budget from the parameters, the scan and greedy in prune.auto."""
    if (params.target_macs is None) == (params.max_est_latency_ms is None):
        raise UserError("prune_channels: ratio: auto needs one target: target_macs (fraction of MACs to keep, "
                        "e.g. 0.5) or max_est_latency_ms (on the recipe's first device)")
    if params.reconstruct and ctx.data is None or params.criterion in ("apoz", "thinet") and ctx.data is None:
        what = "reconstruct: true" if params.reconstruct else f"criterion {params.criterion}"
        raise UserError(f"prune_channels: {what} needs calibration data; add `data:` (an .npz of inputs) to the recipe")
    if params.max_accuracy_drop is not None and ctx.labels is None:
        raise UserError("prune_channels: max_accuracy_drop needs labelled calibration data (a `labels` array "
                        "in the recipe's data); use min_cosine")
    if not params.scan_ratios or any(not 0 < r < 1 for r in params.scan_ratios):
        raise UserError(f"prune_channels: scan_ratios: every ratio must be in (0, 1); got {params.scan_ratios}")
    budget = Budget(params.max_accuracy_drop, params.min_cosine, ctx.fidelity)
    if budget.max_accuracy_drop is None and budget.min_cosine is None:
        budget = Budget(max_accuracy_drop=0.01, spec=ctx.fidelity) if ctx.labels is not None else \
            Budget(min_cosine=0.99, spec=ctx.fidelity)
    if params.target_macs is not None:
        macs = total_macs(model, ctx.input_shapes)
        if not macs:
            raise UserError("prune_channels: target_macs: the model has no MAC layers with known shapes to count")
        target = Target("MACs kept", params.target_macs, lambda m: total_macs(m, ctx.input_shapes) / macs)
    else:
        if ctx.device is None:
            raise UserError("prune_channels: max_est_latency_ms needs a `device:` in the recipe")
        from edgeopt.profile import profile_model  # a parameter asks for the device's estimate

        def latency(m: onnx.ModelProto) -> float:
            return profile_model(m, ctx.device, ctx.input_shapes).totals["est_latency_ms"]

        target = Target("est latency ms", params.max_est_latency_ms, latency)
    data, labels = ctx.data, ctx.labels
    if data is None:  # fidelity on seeded random inputs, as everywhere without data
        from edgeopt.graph.shapes import resolve_input_shapes
        from edgeopt.verify.inputs import random_inputs

        data = dict(random_inputs(model, resolve_input_shapes(model, ctx.input_shapes), ctx.seed,
                                  distributions=ctx.random_inputs).feeds)
    config = PruneConfig(ratio=0.0, criterion=params.criterion, round_to=round_to,
                         min_channels=params.min_channels, exclude=list(params.exclude),
                         reconstruct=params.reconstruct, max_samples=params.max_samples, balance=False)
    result = auto_prune(model, config, target, budget, data, labels, ctx.input_shapes, ctx.seed,
                        tuple(params.scan_ratios), params.on_miss)
    notes, summary = describe(result, target, budget)
    return PassResult(result.outcome.model, bool(result.point.keep), notes, summary)
