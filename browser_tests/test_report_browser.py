"""Open the HTML reports in headless Chromium: the charts render, nothing errs, no request leaves the
page, and every number shown is the JSON's. Screenshots and DOMs go to build/browser/."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeopt.report.html.page import resolve_key

from conftest import REPO, edgeopt

TUNE_FIXTURE = Path(__file__).resolve().parent / "data" / "tune.json"
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class Visit:
    page: object
    console: list = field(default_factory=list)  # (type, text)
    errors: list = field(default_factory=list)  # uncaught page errors
    requests: list = field(default_factory=list)  # every URL the page asked for
    external: list = field(default_factory=list)  # http(s) ones (aborted)


def open_report(browser, path: Path) -> Visit:
    page = browser.new_page(viewport=VIEWPORT)
    visit = Visit(page)
    page.on("console", lambda m: visit.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: visit.errors.append(str(e)))

    def route(r):
        url = r.request.url
        visit.requests.append(url)
        if url.startswith(("http:", "https:", "ws:", "wss:")):
            visit.external.append(url)
            return r.abort()
        return r.continue_()

    page.route("**/*", route)
    page.goto(path.as_uri(), wait_until="load")
    page.evaluate("document.fonts.ready")
    return visit


def keep(visit: Visit, out: Path, stem: str) -> None:
    visit.page.screenshot(path=str(out / f"{stem}.png"), full_page=True)
    (out / f"{stem}.dom.html").write_text(visit.page.content(), encoding="utf-8")


def check_clean(visit: Visit) -> None:
    assert not visit.errors, visit.errors
    assert not [c for c in visit.console if c[0] in ("error", "warning")], visit.console
    assert not visit.external, visit.external
    assert all(u.startswith("file:") or u.startswith("data:") for u in visit.requests), visit.requests


def check_charts(visit: Visit, expected: set[str]) -> None:
    charts = visit.page.evaluate("""() => [...document.querySelectorAll('svg.chart-svg')].map(s => {
        const r = s.getBoundingClientRect();
        return {id: s.id, w: r.width, h: r.height, right: r.right, left: r.left,
                texts: s.querySelectorAll('text').length,
                paths: s.querySelectorAll('path, use').length,
                shown: getComputedStyle(s).display !== 'none' && getComputedStyle(s).visibility !== 'hidden'};
    })""")
    assert {c["id"] for c in charts} == expected
    width = visit.page.evaluate("document.documentElement.clientWidth")
    for c in charts:
        assert c["w"] > 100 and c["h"] > 60 and c["shown"], c
        assert c["left"] >= 0 and c["right"] <= width + 0.5, c  # nothing cut off at the page's edge
        assert c["texts"] > 5 and c["paths"] > 5, c  # axes, labels and marks are there, text as text
    # each chart's text is real text the reader can select
    assert visit.page.evaluate("[...document.querySelectorAll('svg.chart-svg text')]"
                               ".some(t => t.textContent.trim().length > 0)")


def check_numbers(visit: Visit, doc: dict) -> int:
    cells = visit.page.evaluate("""() => [...document.querySelectorAll('[data-key]')].map(e => ({
        key: e.dataset.key, value: e.dataset.value, text: e.innerText.trim(),
        visible: e.getBoundingClientRect().width > 0}))""")
    assert cells
    for cell in cells:
        shown = json.loads(cell["value"])
        expected = resolve_key(doc, cell["key"])
        if isinstance(expected, float) and isinstance(shown, float):
            assert shown == expected or (math.isnan(shown) and math.isnan(expected)), cell
        else:
            assert shown == expected, cell
        assert cell["visible"] and cell["text"], cell
    return len(cells)


@pytest.fixture(scope="module")
def run_report(out_dir):
    html = out_dir / "report_demo.html"
    proc = edgeopt("run", "recipes/demo.yaml", "--format", "json", "--output", out_dir / "demo.opt.onnx",
                   "--report", html, "--quiet")
    assert proc.returncode == 0, proc.stderr
    (out_dir / "report_demo.json").write_text(proc.stdout)
    return json.loads(proc.stdout), html


@pytest.fixture(scope="module")
def tune_report(out_dir):
    html = out_dir / "report_tune.html"
    proc = edgeopt("report", TUNE_FIXTURE, "-o", html, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return json.loads(TUNE_FIXTURE.read_text()), html


def test_run_report_in_chromium(browser, run_report, out_dir):
    doc, html = run_report
    visit = open_report(browser, html)
    try:
        check_clean(visit)
        devices = doc["device"] if isinstance(doc["device"], list) else [doc["device"]]
        check_charts(visit, {"chart-stages", "chart-opclass", *(f"chart-roofline-{d}" for d in devices)})
        n = check_numbers(visit, doc)
        keys = set(visit.page.evaluate("[...document.querySelectorAll('#stage-table [data-key]')]"
                                       ".map(e => e.dataset.key)"))
        for i in range(len(doc["stages"])):
            for d in devices:
                assert f"stages.{i}.devices.{d}.est_latency_ms" in keys
            assert {f"stages.{i}.macs", f"stages.{i}.weight_bytes", f"stages.{i}.fidelity.accuracy"} <= keys
        assert n > 100
        title = visit.page.title()
        assert "mobilenet_digits.onnx" in title
        assert visit.page.locator("#status").inner_text().startswith("All 3 checks passed")
        keep(visit, out_dir, "report_demo")
    finally:
        visit.page.close()


def test_tune_report_in_chromium(browser, tune_report, out_dir):
    doc, html = tune_report
    visit = open_report(browser, html)
    try:
        check_clean(visit)
        check_charts(visit, {"chart-pareto"})
        check_numbers(visit, doc)
        front = visit.page.evaluate("[...document.querySelectorAll('#front-table [data-key$=\".number\"]')]"
                                    ".map(e => JSON.parse(e.dataset.value))")
        assert front == doc["pareto"]
        # the front's points are drawn: one marker per Pareto trial
        marks = visit.page.evaluate("document.querySelectorAll('#chart-pareto-pareto-front use').length")
        assert marks == len(doc["pareto"])
        keep(visit, out_dir, "report_tune")
    finally:
        visit.page.close()
