"""From parameters (ratio, round_to, min_channels, exclude) to how many channels each group keeps."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from edgeopt.prune.groups import ChannelGroup


@dataclass
class GroupPlan:
    group: ChannelGroup
    ratio: float  # asked for
    keep: int  # channels kept (== group.length: untouched)
    reason: str = ""  # why it is untouched, if it is

    @property
    def removed(self) -> int:
        return self.group.length - self.keep


def match(patterns, names: list[str]) -> str | None:
    """The first pattern (glob) that matches one of the names."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return pattern
    return None


def ratio_for(group: ChannelGroup, ratio: float | dict[str, float]) -> tuple[float, str | None]:
    if isinstance(ratio, dict):
        pattern = match(ratio, group.source_names)
        return (ratio[pattern], pattern) if pattern is not None else (0.0, None)
    return float(ratio), None


def _choices(length: int, round_to: int, min_channels: int) -> list[int]:
    """Channel counts a group may keep: multiples of round_to in [min, length), and length itself."""
    floor = max(1, min_channels)
    floor = math.ceil(floor / round_to) * round_to
    return [n for n in range(floor, length, round_to)] + [length]


def plan_groups(groups: list[ChannelGroup], ratio: float | dict[str, float], round_to: int = 1,
                min_channels: int = 1, exclude: list[str] | None = None, balance: bool = True) -> list[GroupPlan]:
    """Channels to keep per group.

    Each group keeps about (1 - ratio) of its channels, rounded to a multiple
    of round_to and at least min_channels. With one global ratio and
    `balance`, the roundings are then evened out so that the channels removed
    over the network (counted per producing layer) come closest to the ratio.
    """
    plans = []
    for group in groups:
        r, _ = ratio_for(group, ratio)
        if not group.prunable:
            plans.append(GroupPlan(group, r, group.length, "; ".join(group.frozen)))
            continue
        pattern = match(exclude or [], group.source_names)
        if pattern is not None:
            plans.append(GroupPlan(group, r, group.length, f"excluded by {pattern!r}"))
            continue
        if r <= 0:
            plans.append(GroupPlan(group, r, group.length, "ratio 0"))
            continue
        choices = _choices(group.length, round_to, min_channels)
        want = group.length * (1 - r)
        keep = min(choices, key=lambda n: (abs(n - want), -n))
        reason = ""
        if keep == group.length:
            reason = (f"{group.length} channels: keeping {want:.1f} rounds to all of them "
                      f"(round_to {round_to}, min_channels {min_channels})")
        plans.append(GroupPlan(group, r, keep, reason))
    if balance and not isinstance(ratio, dict) and ratio > 0:
        _balance(plans, float(ratio), round_to, min_channels)
    return plans


def _balance(plans: list[GroupPlan], ratio: float, round_to: int, min_channels: int) -> None:
    """Move single groups one rounding step so the network-wide removed fraction nears `ratio`."""
    live = [p for p in plans if p.group.prunable and not p.reason.startswith(("excluded", "ratio 0"))]
    weight = {id(p): len(p.group.sources) for p in live}
    total = sum(p.group.length * weight[id(p)] for p in live)
    if not total:
        return
    target = ratio * total
    for _ in range(4 * len(live)):
        removed = sum(p.removed * weight[id(p)] for p in live)
        gap = target - removed
        best, best_gap = None, abs(gap)
        for p in live:
            choices = _choices(p.group.length, round_to, min_channels)
            i = choices.index(p.keep)
            for j in (i - 1, i + 1):
                if 0 <= j < len(choices):
                    new_gap = abs(gap - (p.keep - choices[j]) * weight[id(p)])
                    # prefer the move that keeps this group's own fraction nearest the ratio
                    own = abs((1 - choices[j] / p.group.length) - ratio)
                    if new_gap < best_gap - 1e-9 or (best is not None and abs(new_gap - best_gap) < 1e-9
                                                     and own < best[2]):
                        best, best_gap = (p, choices[j], own), new_gap
        if best is None:
            return
        p, keep, _ = best
        p.keep = keep
        p.reason = "" if keep < p.group.length else p.reason or "balanced to keep all"
