"""The stage table on terminals of 80, 100 and 160 columns: every number whole, nothing past the edge."""

from __future__ import annotations

import io

import pytest

from edgeopt.report.render import print_rich
from edgeopt.report.run_tables import run_tables


def _doc(devices=("host", "myriadx", "rpi3")) -> dict:
    stages = []
    for i, name in enumerate(["input", "simplify", "fold_batchnorm", "prune_channels", "quantize_weights"]):
        stages.append({
            "stage": i, "pass": name, "macs": 2_824_704 - 100_000 * i, "params_count": 76_586 - 1000 * i,
            "weight_bytes": 306_790 - 20_000 * i, "peak_activation_bytes": 65_536 - 1000 * i,
            "est_latency_ms": 0.0391 - 0.001 * i, "est_energy_mj": 0.0123,
            "devices": {d: {"est_latency_ms": 1.234 + i, "est_energy_mj": 0.5} for d in devices},
            "measured_latency_ms": 0.2512 + 0.01 * i,
            "fidelity": {"cosine": 0.999696 - 0.01 * i, "max_abs_error": 1.2e-3 * i, "top1_agreement": 0.9963,
                         "accuracy": 0.9852 - 0.001 * i},
            "summary": "done"})
    return {"model": "m.onnx", "output": "o.onnx", "device": list(devices), "data": "d.npz", "stages": stages,
            "checks": []}


def _render(doc, width, wide=False) -> str:
    buf = io.StringIO()
    print_rich(run_tables(doc), buf, width=width, wide=wide)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100, 160])
def test_every_shown_number_is_whole_and_fits(width):
    out = _render(_doc(), width)
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out
    header = next(line for line in out.splitlines() if "pass" in line and "MACs" in line)
    assert "MACs" in header and "weights" in header
    assert "2.82 M" in out and "299.60 KiB" in out  # the input row's figures, whole
    if width >= 100:  # the first device's estimate, the host measurement and fidelity stay at 100
        assert "host est ms" in header and "host meas ms" in header and "cosine" in header
        assert "accuracy" in header and "0.9852" in out
    if width < 160:
        assert "not shown at" in out and "--wide" in out
    assert ("peak act." in header) == (width >= 160)  # wider terminals show more


def test_at_160_columns_two_devices_show_both_estimates_whole():
    out = _render(_doc(devices=("myriadx", "rpi3")), 160)
    assert max(len(line) for line in out.splitlines()) <= 160 and "…" not in out
    assert "myriadx est mJ" in out and "rpi3 est ms" in out and "peak act." in out


def test_host_estimated_and_measured_columns_have_distinct_headers():
    out = _render(_doc(), 200)
    header = next(line for line in out.splitlines() if "pass" in line and "MACs" in line)
    assert header.count("host est ms") == 1 and header.count("host meas ms") == 1
    assert "myriadx est ms" in header and "rpi3 est ms" in header


def test_wide_shows_every_column_whole():
    out = _render(_doc(), 100, wide=True)
    assert "not shown" not in out and "…" not in out
    assert "params" in out and "top-1 agr." in out and "76.59 k" in out
