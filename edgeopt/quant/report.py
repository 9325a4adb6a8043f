"""Wording shared by the quantization passes' summaries."""

from __future__ import annotations


def fmt_bytes(n: float) -> str:
    """1234 -> '1.23 KB' (decimal units, as the profiler reports)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"
