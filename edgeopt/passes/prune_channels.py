"""prune_channels: remove whole output channels of Conv / Gemm / MatMul layers, and everything that reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx

from edgeopt.errors import UserError
from edgeopt.passes import NodeNote, Pass, PassContext, PassResult, param, register
from edgeopt.prune.core import PruneConfig, prune_model

Criterion = Literal["l1", "l2", "bn_scale", "apoz", "thinet"]


@dataclass
class Params:
    ratio: float | dict[str, float] = param(
        0.3, "fraction of channels to remove in each group; or a mapping of layer-name glob -> fraction "
             "(first matching glob wins, unmatched layers are kept; add '*' for a default)", ge=0, lt=1)
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
        "`edgeopt sensitivity MODEL --data D.npz` proposes per-layer ratios within a fidelity budget."
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
