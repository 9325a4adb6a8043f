"""`edgeopt report` and `edgeopt run --report`: the HTML page's structure and numbers (no browser here;
browser_tests/ opens the page in Chromium)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeopt.cli.main import cli
from edgeopt.devices import load_device
from edgeopt.report.html import render_html
from edgeopt.report.html.page import resolve_key

REPO = Path(__file__).resolve().parents[1]
TUNE_FIXTURE = REPO / "browser_tests" / "data" / "tune.json"


class Page(HTMLParser):
    """What the tests look at: elements with data-key / data-value, svg ids, sections, script / link tags."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.values: list[dict] = []  # {attrs..., "text"}
        self.svgs: list[str] = []
        self.sections: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._open: list[dict] = []
        self._section: str | None = None
        self.svg_section: dict[str, str | None] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(a.get("id"))
        if tag == "svg":
            self.svgs.append(a.get("id"))
            self.svg_section[a.get("id")] = self._section
        if "data-value" in a:
            entry = dict(a, text="", tag=tag)
            self.values.append(entry)
            self._open.append(entry)

    def handle_endtag(self, tag):
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data):
        for entry in self._open:
            entry["text"] += data


def run_cli(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    """A two-device run of the tiny classifier with --report: (json doc, html text, folder)."""
    from tests.conftest import tiny_classifier
    import onnx
    import yaml

    folder = tmp_path_factory.mktemp("report")
    onnx.save(tiny_classifier(), folder / "tiny.onnx")
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "model": "tiny.onnx", "output": "out/tiny.opt.onnx", "device": ["myriadx", "rpi3"],
        "passes": ["fold_batchnorm", {"quantize_weights": {"bits": 8}}],
        "checks": {"min_cosine": 0.9}}, sort_keys=False))
    result = run_cli("run", folder / "recipe.yaml", "--format", "json", "--no-measure",
                     "--report", folder / "report.html")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # stdout is the JSON alone
    return doc, (folder / "report.html").read_text(encoding="utf-8"), folder, result


@pytest.fixture(scope="module")
def tune_report():
    doc = json.loads(TUNE_FIXTURE.read_text())
    return doc, render_html(doc)


def test_run_report_written_and_json_stdout_clean(run_report):
    doc, text, folder, result = run_report
    assert (folder / "out" / "tiny.opt.onnx").exists()
    assert "layers" in doc and set(doc["layers"]) == {"myriadx", "rpi3"}  # --report keeps the rows
    assert "wrote" in result.stderr and "report.html" in result.stderr
    assert text.startswith("<!DOCTYPE html>")
    assert not list(folder.glob("*.tmp*")) and not list(folder.glob(".*report*"))


def test_plain_run_json_has_no_layers(tmp_path, tiny_model_path, write_recipe):
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "device": "rpi3",
                           "passes": ["fold_batchnorm"]})
    result = run_cli("run", recipe, "--format", "json", "--no-measure")
    assert result.exit_code == 0
    assert "layers" not in json.loads(result.stdout)


def test_no_external_resources(run_report, tune_report):
    for text in (run_report[1], tune_report[1]):
        assert not re.search(r"https?:", text, re.I)
        page = Page(text)
        assert not [t for t, a in page.tags if t == "script"]
        assert not [t for t, a in page.tags if t in ("link", "img", "iframe", "object", "embed")]
        assert not [a for t, a in page.tags if "src" in a]
        assert "@import" not in text and "url(http" not in text
        # SVG references stay inside the page
        assert all(ref.startswith("#") for ref in re.findall(r'xlink:href="([^"]*)"', text))


def test_run_numbers_equal_json(run_report):
    doc, text = run_report[0], run_report[1]
    page = Page(text)
    keyed = [v for v in page.values if v.get("data-key")]
    stage_keys = {v["data-key"] for v in keyed if v["data-key"].startswith("stages.")}
    n = len(doc["stages"])
    for i in range(n):
        for field in ("macs", "weight_bytes", "peak_activation_bytes", "params_count", "est_energy_mj",
                      "fidelity.cosine", "fidelity.accuracy", "devices.myriadx.est_latency_ms",
                      "devices.rpi3.est_latency_ms"):
            assert f"stages.{i}.{field}" in stage_keys
    for v in keyed:
        assert json.loads(v["data-value"]) == resolve_key(doc, v["data-key"]), v["data-key"]
    assert len(keyed) > 12 * n
    # the shown text is the value, formatted
    macs = next(v for v in keyed if v["data-key"] == "stages.0.macs")
    assert macs["text"].strip() in (f"{doc['stages'][0]['macs']}", f"{doc['stages'][0]['macs'] / 1e3:.2f} k")
    est = next(v for v in keyed if v["data-key"] == f"stages.{n - 1}.devices.rpi3.est_latency_ms"
               and v["tag"] == "td")
    assert est["text"] == f"{doc['stages'][-1]['devices']['rpi3']['est_latency_ms']:.4g}"
    assert {v["data-key"] for v in keyed if v["data-key"].startswith("checks.")} >= {"checks.0.value", "checks.0.ok"}
    assert any(v["data-key"].startswith("layers.rpi3.") for v in keyed)  # the slowest layers' rows


def test_run_svgs_per_section(run_report):
    page = Page(run_report[1])
    assert page.sections[:2] == ["stages", "checks"]
    by_section = {}
    for svg_id, sec in page.svg_section.items():
        by_section.setdefault(sec, []).append(svg_id)
    assert by_section == {"cost": ["chart-stages"], "roofline": ["chart-roofline-myriadx", "chart-roofline-rpi3"],
                          "op-classes": ["chart-opclass"]}
    assert len(set(re.findall(r'\bid="([^"]+)"', run_report[1]))) == len(re.findall(r'\bid="([^"]+)"', run_report[1]))
    # text in the charts is SVG text (selectable), not glyph paths
    assert "<text" in run_report[1] and 'id="chart-stages-DejaVuSans' not in run_report[1]


def test_class_sums_equal_layers(run_report):
    doc, text = run_report[0], run_report[1]
    from edgeopt.report.html.style import report_class

    for v in Page(text).values:
        if v.get("data-sum"):
            device = v["data-sum"].split(".", 1)[1]
            expected = sum(r.get("est_latency_ms") or 0.0 for r in doc["layers"][device]
                           if report_class(r) == v["data-class"])
            assert json.loads(v["data-value"]) == pytest.approx(expected, rel=1e-12)


def test_roofline_ridge_is_peak_over_bandwidth(run_report):
    ridges = [v for v in Page(run_report[1]).values if v.get("class") == "ridge"]
    assert {r["data-device"] for r in ridges} == {"myriadx", "rpi3"}
    for r in ridges:
        device = load_device(r["data-device"])
        expected = device.peak_ops_per_s(r["data-precision"]) / device.dram_bytes_per_s
        assert json.loads(r["data-value"]) == pytest.approx(expected, rel=1e-12)
    myriad = next(r for r in ridges if r["data-device"] == "myriadx")
    assert myriad["data-precision"] == "fp16" and json.loads(myriad["data-value"]) == pytest.approx(1000 / 12.8)
    # the ridge is drawn (a line with its own id in the chart)
    assert 'id="chart-roofline-myriadx-ridge-fp16"' in run_report[1]


def test_same_json_same_bytes(run_report, tmp_path):
    doc, text, folder, _ = run_report
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    assert run_cli("report", path, "-o", tmp_path / "a.html").exit_code == 0
    assert run_cli("report", path, "-o", tmp_path / "b.html").exit_code == 0
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    assert (tmp_path / "a.html").read_text() == text  # run --report and report of its JSON agree


def test_report_without_layers_profiles_output_or_says_why(run_report, tmp_path):
    doc = {k: v for k, v in run_report[0].items() if k != "layers"}
    doc["output"] = str(run_report[2] / "out" / "tiny.opt.onnx")
    page = Page(render_html(doc))
    assert {"chart-roofline-myriadx", "chart-roofline-rpi3"} <= set(page.svgs)
    assert "profiled from the output model" in render_html(doc)
    doc["output"] = str(tmp_path / "gone.onnx")
    text = render_html(doc)
    assert "Roofline left out" in text and "does not exist" in text
    assert not any(s.startswith("chart-roofline") for s in Page(text).svgs)
    assert "chart-stages" in Page(text).svgs


def test_tune_report(tune_report):
    doc, text = tune_report
    page = Page(text)
    assert page.svgs == ["chart-pareto"] and page.sections == ["pareto", "front", "trials"]
    keyed = [v for v in page.values if v.get("data-key")]
    for v in keyed:
        assert json.loads(v["data-value"]) == resolve_key(doc, v["data-key"]), v["data-key"]
    shown = {v["data-key"] for v in keyed}
    for i, t in enumerate(doc["trials"]):
        if t["values"] is not None:
            for o in doc["objectives"]:
                assert f"trials.{i}.values.{o['name']}" in shown
    assert 'id="chart-pareto-pareto-front"' in text and 'id="chart-pareto-baseline"' in text
    front_rows = re.findall(r'<tr[^>]*>.*?</tr>', text.split('id="front-table"')[1].split("</table>")[0], re.S)
    assert len(front_rows) == 1 + len(doc["pareto"])


def test_run_report_of_failed_checks(tmp_path, tiny_model_path, write_recipe):
    recipe = write_recipe({"model": tiny_model_path.name, "output": "o.onnx", "device": "rpi3",
                           "passes": ["fold_batchnorm"], "checks": {"max_weight_bytes": 10}})
    result = run_cli("run", recipe, "--no-measure", "--format", "json", "--report", tmp_path / "r.html")
    assert result.exit_code == 1
    assert not (tmp_path / "o.onnx").exists()
    assert "the model was not written (report:" in result.stderr
    text = (tmp_path / "r.html").read_text()
    assert "Checks failed (max_weight_bytes)" in text and "chart-roofline-rpi3" in text
    json.loads(result.stdout)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not JSON (line 1, column 2"),
    ('{"kind": "sweep"}', "not an edgeopt run or tune document (kind 'sweep')"),
    ('{"model": "m.onnx"}', "not an edgeopt run or tune document (no `stages`)"),
    ("[1, 2]", "not an edgeopt run or tune document (a JSON list)"),
    ('{"stages": []}', "malformed run document: `stages` is empty"),
    ('{"kind": "tune", "objectives": [], "trials": [{"state": "complete"}]}', "trials[0] is not a trial"),
])
def test_bad_input_exit_2_one_line(tmp_path, content, message):
    path = tmp_path / "doc.json"
    if content is not None:
        path.write_text(content)
    result = run_cli("report", path, "-o", tmp_path / "r.html")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"edgeopt: error: {path}") and message in lines[0]
    assert not (tmp_path / "r.html").exists() and result.stdout == ""


def test_bad_input_subprocess_no_traceback(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "report", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"edgeopt: error: {path}: not JSON (line 1, column 2: Expecting property name enclosed in double quotes); "
        "pass the output of `edgeopt run --format json` or `edgeopt tune --format json`"]


def test_report_output_is_a_folder(tmp_path):
    result = run_cli("report", TUNE_FIXTURE, "-o", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.stderr


def test_resolve_key_dotted_names():
    doc = {"layers": {"my.dev": [{"a": 1}]}, "trials": [{"values": {"x@y": 2.5}}]}
    assert resolve_key(doc, "layers.my.dev.0.a") == 1
    assert resolve_key(doc, "trials.0.values.x@y") == 2.5
    with pytest.raises(KeyError):
        resolve_key(doc, "trials.3.values")
