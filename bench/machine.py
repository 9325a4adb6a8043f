"""Describe the machine a benchmark ran on (for the header of bench/RESULTS*.md)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    import numpy
    import onnx
    import onnxruntime

    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"numpy {numpy.__version__}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
