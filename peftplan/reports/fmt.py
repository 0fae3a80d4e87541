"""Human formatting of report numbers: bytes, counts, rates, percentages. Missing values print as '—' (a value
that was not measured is missing, never a zero)."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_bytes(value: Any) -> str:
    """Binary units: 912.0 MiB, 1.50 GiB."""
    if is_missing(value):
        return MISSING
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            if unit == "B" or size == int(size):
                return f"{size:.0f} {unit}"
            return f"{size:.3g} {unit}" if size < 10 else f"{size:.1f} {unit}"
        size /= 1024
    return MISSING  # unreachable


def fmt_count(value: Any) -> str:
    """Parameter counts: 27,648 / 1.84M / 8.03B."""
    if is_missing(value):
        return MISSING
    n = float(value)
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f}B"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{int(n):,}"


def fmt_num(value: Any, digits: int = 3) -> str:
    """A metric: significant digits, no scientific notation for ordinary values."""
    if is_missing(value):
        return MISSING
    x = float(value)
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:,.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def fmt_rate(value: Any) -> str:
    """Tokens per second."""
    if is_missing(value):
        return MISSING
    x = float(value)
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_pct(value: Any, *, signed: bool = True) -> str:
    if is_missing(value):
        return MISSING
    return f"{float(value):+.1f}%" if signed else f"{float(value):.1f}%"


def fmt_value(value: Any) -> str:
    """A config value as it reads best in a table cell."""
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return fmt_num(value, 3)
    if isinstance(value, list | tuple):
        return ",".join(fmt_value(v) for v in value)
    return str(value)


def fmt_params(params: dict[str, Any]) -> str:
    """`rank=16 lr=0.0001 targets=attn`."""
    return " ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or MISSING
