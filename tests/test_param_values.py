"""The typed parameter declaration: coercion, bounds and messages for every supported type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from edgeopt.errors import UserError
from edgeopt.passes.base import param
from edgeopt.recipe.values import build_params, describe_params


@dataclass
class Demo:
    ratio: float | dict[str, float] = param(0.25, "fraction to remove", gt=0, lt=1)
    bits: int = param(8, "bits", ge=2, le=8)
    mode: Literal["l1", "l2"] = param("l1", "criterion")
    round_to: int | Literal["device"] = param(1, "alignment", ge=1)
    exclude: list[str] = param(default_factory=list, help="globs")
    verbose: bool = param(False, "talk")


def build(raw):
    return build_params(Demo, raw, "r.yaml: passes[0].demo")


def test_defaults_and_coercion():
    p = build({"ratio": 0.5, "bits": 4.0, "exclude": "conv*", "round_to": "device"})
    assert (p.ratio, p.bits, p.mode, p.round_to, p.exclude, p.verbose) == (0.5, 4, "l1", "device", ["conv*"], False)
    assert isinstance(p.bits, int)


def test_per_layer_mapping():
    assert build({"ratio": {"layer1.*": 0.5, "fc": 0.1}}).ratio == {"layer1.*": 0.5, "fc": 0.1}


@pytest.mark.parametrize("raw, message", [
    ({"ratio": 1.5}, "passes[0].demo.ratio: must be in (0, 1), got 1.5"),
    ({"ratio": {"fc": 2}}, "passes[0].demo.ratio.fc: must be in (0, 1), got 2.0"),
    ({"bits": 9}, "passes[0].demo.bits: must be in [2, 8], got 9"),
    ({"bits": 2.5}, "passes[0].demo.bits: must be an integer, got 2.5"),
    ({"bits": True}, "passes[0].demo.bits: must be an integer, got True"),
    ({"mode": "l3"}, "passes[0].demo.mode: must be 'l1' or 'l2', got 'l3'"),
    ({"mode": "L1"}, "did you mean 'l1'?"),
    ({"round_to": 0}, "passes[0].demo.round_to: must be >= 1, got 0"),
    ({"round_to": "dev"}, "must be an integer or 'device', got 'dev'"),
    ({"verbose": "yes"}, "passes[0].demo.verbose: must be true/false, got 'yes'"),
    ({"exclude": [1]}, "passes[0].demo.exclude[0]: must be a string, got 1"),
    ({"ration": 0.5}, "unknown parameter 'ration'; did you mean 'ratio'?"),
])
def test_bad_values_name_the_location(raw, message):
    with pytest.raises(UserError) as info:
        build(raw)
    assert message in str(info.value)


def test_describe_lists_type_default_bounds_help():
    rows = {r["name"]: r for r in describe_params(Demo)}
    assert rows["ratio"]["bounds"] == "> 0, < 1"
    assert rows["ratio"]["type"] == "a number or a mapping of name to a number"
    assert rows["exclude"]["default"] == []
    assert rows["mode"]["help"] == "criterion"
