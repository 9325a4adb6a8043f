"""Recipe validation: golden bad recipes each assert their message; --set; paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.errors import UserError
from edgeopt.recipe.load import apply_overrides, load_recipe, parse_recipe

BAD = sorted((Path(__file__).parent / "recipes_bad").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message part>'"
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_recipe_is_one_clear_line(path: Path):
    with pytest.raises(UserError) as info:
        load_recipe(path)
    message = str(info.value)
    assert _expected(path) in message
    assert message.startswith(str(path)), "the message names the file"
    assert "\n" not in message


def test_missing_recipe_file(tmp_path: Path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_paths_are_relative_to_the_recipe(tmp_path: Path, write_recipe):
    (tmp_path / "sub").mkdir()
    recipe = load_recipe(write_recipe({"model": "m.onnx", "output": "out/o.onnx", "data": "d.npz"}, "sub/r.yaml"))
    assert recipe.model == tmp_path / "sub" / "m.onnx"
    assert recipe.output == tmp_path / "sub" / "out" / "o.onnx"
    assert recipe.data == tmp_path / "sub" / "d.npz"


def test_device_string_or_list(write_recipe):
    assert load_recipe(write_recipe({"model": "m.onnx", "device": "rpi3"})).devices == ["rpi3"]
    assert load_recipe(write_recipe({"model": "m.onnx", "device": ["rpi3", "myriadx"]})).devices == ["rpi3", "myriadx"]


def test_checks_parsed_as_floats(write_recipe):
    recipe = load_recipe(write_recipe({"model": "m.onnx", "checks": {"max_weight_bytes": 1000, "min_cosine": 0.99}}))
    assert recipe.checks == {"max_weight_bytes": 1000.0, "min_cosine": 0.99}


def test_set_overrides_pass_params_by_index():
    doc = {"model": "m.onnx", "passes": ["simplify", {"fold_batchnorm": None}]}
    apply_overrides(doc, ["passes.1.x=0.5", "checks.min_cosine=0.9", "device=rpi3"], "r.yaml")
    assert doc["passes"][1] == {"fold_batchnorm": {"x": 0.5}}
    assert doc["checks"] == {"min_cosine": 0.9}
    assert doc["device"] == "rpi3"


def test_set_accepts_the_pass_name_in_the_path():
    doc = {"passes": [{"fold_batchnorm": {"x": 1}}]}
    apply_overrides(doc, ["passes.0.fold_batchnorm.x=2"], "r.yaml")
    assert doc["passes"][0] == {"fold_batchnorm": {"x": 2}}


def test_set_reaches_into_a_bare_pass_name():
    doc = {"passes": ["simplify"]}
    apply_overrides(doc, ["passes.0.y=true"], "r.yaml")
    assert doc["passes"][0] == {"simplify": {"y": True}}


@pytest.mark.parametrize("item, message", [
    ("noequals", "expected KEY=VALUE"),
    ("passes.7.x=1", "'7' is not an index of a list of 1"),
])
def test_bad_set(item, message):
    with pytest.raises(UserError, match=message):
        apply_overrides({"passes": ["simplify"]}, [item], "r.yaml")


def test_bad_set_value_reaches_the_validator(write_recipe):
    path = write_recipe({"model": "m.onnx", "passes": ["fold_batchnorm"]})
    with pytest.raises(UserError, match=r"passes\[0\]\.fold_batchnorm: unknown parameter 'nope'"):
        load_recipe(path, ["passes.0.nope=1"])


def test_empty_recipe_says_what_is_missing(write_recipe):
    with pytest.raises(UserError, match="missing 'model:'"):
        parse_recipe({}, Path("r.yaml"))
