"""What this machine is: CPU model, cores, SIMD width, caches (Linux /proc and /sys, best effort)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model, logical cores, flags of interest, cache sizes and an fp32 FLOP/cycle/core estimate."""
    model, flags, mhz = platform.processor() or platform.machine(), set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
    except (OSError, ValueError):
        pass
    if "avx512f" in flags:
        flops_per_cycle = 64  # 2 x 512-bit FMA x 16 lanes... conservatively one FMA unit x 2 x 16
    elif "avx2" in flags and "fma" in flags:
        flops_per_cycle = 32  # 2 FMA units x 8 fp32 lanes x 2
    elif "avx" in flags:
        flops_per_cycle = 16
    else:
        flops_per_cycle = 8
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        factor = 1024 * 1024 if size.endswith("M") else 1024 if size.endswith("K") else 1
        caches[f"L{level}"] = int(size.rstrip("KM")) * factor
    return {
        "model": model or "unknown",
        "cores": os.cpu_count() or 1,
        "mhz": mhz,
        "flags": sorted(f for f in flags if f in {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni",
                                                     "avx_vnni", "neon", "asimd"}),
        "flops_per_cycle": flops_per_cycle,
        "caches": caches,
    }


def cpu_signature() -> str:
    """Identifies the machine a host calibration belongs to."""
    info = cpu_info()
    return f"{info['model']} x{info['cores']}"


def describe_machine() -> str:
    import sys

    info = cpu_info()
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort = "?"
    return (f"{info['model']}, {info['cores']} cores, {', '.join(info['flags']) or 'no SIMD flags read'}; "
            f"Python {sys.version.split()[0]}, onnxruntime {ort}")
