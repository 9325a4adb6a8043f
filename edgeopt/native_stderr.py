"""Capture what native libraries print straight to file descriptor 2 (onnxsim's C++ warns there),
so a run's stderr carries edgeopt's own lines only and the chatter can go into a pass's notes."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """`with captured_stderr() as lines:` ... then `lines` holds what was printed, one entry a line."""
    lines: list[str] = []
    fd = 2  # what C++ writes to, whatever Python's sys.stderr is now
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())
