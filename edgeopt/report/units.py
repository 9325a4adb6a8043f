"""Human-readable numbers for tables (JSON keeps the raw values)."""

from __future__ import annotations


def count(value) -> str:
    """12_345_678 -> '12.35 M'."""
    if value is None:
        return "-"
    value = float(value)
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:g}"


def nbytes(value) -> str:
    """1_572_864 -> '1.50 MiB'."""
    if value is None:
        return "-"
    value = float(value)
    for factor, suffix in ((1 << 30, " GiB"), (1 << 20, " MiB"), (1 << 10, " KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f} B"


def fixed(digits: int):
    def fmt(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (int, float)):
            return f"{value:.{digits}f}"
        return str(value)

    return fmt


def plain(value, digits: int = 6) -> str:
    """A value as text: - for missing, yes/no, floats to `digits` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
