"""Progress bars appear on a terminal's stderr only, and --quiet or a pipe keeps them out."""

from __future__ import annotations

import os
import re
import pty
import subprocess
import sys

import onnx

from conftest import tiny_classifier

EDGEOPT = [sys.executable, "-m", "edgeopt"]


def _recipe(tmp_path):
    onnx.save(tiny_classifier(), tmp_path / "m.onnx")
    path = tmp_path / "r.yaml"
    path.write_text("model: m.onnx\noutput: out.onnx\ninput_shapes: {input: [1, 3, 8, 8]}\n"
                    "passes:\n  - quantize_codebook: {bits: 4, min_elements: 1}\n")
    return path


def _stderr_on_terminal(args: list[str]) -> str:
    """Run with stderr on a pseudo-terminal (stdout piped) and return what the terminal got."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_sees_the_weight_bar(tmp_path):
    shown = _stderr_on_terminal(EDGEOPT + ["run", str(_recipe(tmp_path)), "--no-measure"])
    assert "clustered weights" in shown  # the bar's label, from quant.driver
    assert re.search(r"\d/2\b", shown)  # counted out of both weights (conv and fc); fast work may end at 0/2


def test_quiet_and_pipes_get_no_bar(tmp_path):
    recipe = _recipe(tmp_path)
    quiet = _stderr_on_terminal(EDGEOPT + ["run", str(recipe), "--no-measure", "--quiet"])
    assert "clustered weights" not in quiet
    piped = subprocess.run(EDGEOPT + ["run", str(recipe), "--no-measure"], capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert "clustered weights" not in piped.stderr
    assert "[1/1] quantize_codebook" in piped.stderr  # the plain log lines are still there
