"""prune_model: analysis -> plan -> scores -> shrink -> (reconstruct), for the pass and the sensitivity scan."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx_ir.passes.common import IdentityEliminationPass

from edgeopt.graph.edit import to_ir, to_proto
from edgeopt.pass_types import NodeNote
from edgeopt.prune.criteria import DATA_CRITERIA, channel_scores, keep_indices
from edgeopt.prune.groups import GraphAnalysis, analyze, static_shapes
from edgeopt.prune.macs import total_macs
from edgeopt.prune.plan import GroupPlan, plan_groups
from edgeopt.prune.reconstruct import TargetCache, refit
from edgeopt.prune.shrink import shrink


@dataclass
class PruneConfig:
    ratio: float | dict[str, float] = 0.3
    criterion: str = "l1"
    round_to: int = 1
    min_channels: int = 1
    exclude: list[str] = field(default_factory=list)
    reconstruct: bool = False
    max_samples: int = 256
    balance: bool = True


@dataclass
class PruneOutcome:
    model: onnx.ModelProto
    plans: list[GroupPlan]
    notes: list[NodeNote]
    macs_before: int
    macs_after: int
    channels_before: int  # output channels of every producing layer in the network
    channels_removed: int
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> channel indices kept

    @property
    def macs_saved(self) -> int:
        return self.macs_before - self.macs_after

    @property
    def pruned_groups(self) -> list[GroupPlan]:
        return [p for p in self.plans if p.removed > 0]


def analyze_model(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
    """The editable IR of a copy of `model` and its channel groups."""
    ir_model = to_ir(model)
    # Exporters share equal weights through Identity nodes (a BN bias read via Identity): see through them.
    try:
        IdentityEliminationPass()(ir_model)
    except ValueError:  # onnx_ir cannot move an If branch's output Identity (silero VAD): keep them all
        ir_model = to_ir(model)
    return ir_model, analyze(ir_model, static_shapes(model, input_shapes))


def _sources_channels(analysis: GraphAnalysis) -> int:
    return sum(analysis.length[s.space] for s in analysis.sources)


def prune_model(model: onnx.ModelProto, config: PruneConfig, data: dict[str, np.ndarray] | None = None,
                input_shapes: dict[str, list[int]] | None = None, seed: int = 0,
                keep_counts: dict[int, int] | None = None,
                scores: dict[int, np.ndarray] | None = None, targets: "TargetCache | None" = None) -> PruneOutcome:
    """Prune channels of `model` (not modified) and say what was done to each group.

    keep_counts (group id -> channels kept) overrides the plan from the
    ratio; scores (group id -> importance) skips computing the criterion.
    Both are for the sensitivity scan, which prunes the same model many times; so is targets (a
    reconstruct.TargetCache: the original network's layer outputs, computed once for all of them).
    """
    if config.criterion in DATA_CRITERIA and data is None:
        raise ValueError(f"criterion {config.criterion} needs calibration data (`data:` in the recipe)")
    if config.reconstruct and data is None:
        raise ValueError("reconstruct: true needs calibration data (`data:` in the recipe)")
    ir_model, analysis = analyze_model(model, input_shapes)
    plans = plan_groups(analysis.groups, config.ratio, config.round_to, config.min_channels,
                        config.exclude, balance=config.balance)
    if keep_counts is not None:
        for p in plans:
            if p.group.id in keep_counts and p.group.prunable:
                p.keep = keep_counts[p.group.id]
                p.reason = "" if p.keep < p.group.length else p.reason
            elif p.group.prunable:
                p.keep, p.reason = p.group.length, "not in this trial"
    to_prune = [p for p in plans if p.removed > 0]
    notes: list[NodeNote] = []
    fallbacks: dict[int, str] = {}
    if to_prune and scores is None:
        scores, fallbacks = channel_scores(model, analysis, [p.group for p in to_prune], config.criterion,
                                           data, config.max_samples, seed)
    keep = {p.group.id: keep_indices(scores[p.group.id], p.keep) for p in to_prune}
    changed = shrink(ir_model, analysis, keep) if keep else {}
    for p in plans:
        notes.append(_group_note(p, fallbacks.get(p.group.id)))
    macs_before = total_macs(model, input_shapes)
    if config.reconstruct and keep:
        consumers = sorted({c.node.outputs[0].name for p in to_prune for c in p.group.consumers})
        notes.extend(refit(model, ir_model, consumers, changed, data, config.max_samples, seed, targets))
    pruned = to_proto(ir_model) if keep else model
    macs_after = total_macs(pruned, input_shapes) if keep else macs_before
    removed = sum(p.removed * len(p.group.sources) for p in to_prune)
    return PruneOutcome(pruned, plans, notes, macs_before, macs_after, _sources_channels(analysis), removed, keep)


def _group_note(p: GroupPlan, fallback: str | None) -> NodeNote:
    g = p.group
    ops = "+".join(sorted({s.node.op_type for s in g.sources})) or "-"
    figures = {"channels": g.length, "kept": p.keep, "layers": g.source_names}
    if p.removed > 0:
        reason = f"{p.removed} of {g.length} channels removed in {len(g.sources)} layer(s)"
        if len(g.sources) > 1:
            reason += " (tied: " + ", ".join(g.source_names[:4]) + (", ..." if len(g.sources) > 4 else "") + ")"
        if fallback:
            reason += f"; {fallback}"
        return NodeNote(g.name, ops, "pruned", reason, figures)
    return NodeNote(g.name, ops, "skipped", p.reason or "nothing to remove", figures)


__all__ = ["PruneConfig", "PruneOutcome", "prune_model", "analyze_model"]
