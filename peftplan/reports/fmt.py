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


def _interval_of(interval: Any) -> tuple[float, float] | None:
    if isinstance(interval, list | tuple) and len(interval) == 2 and not any(is_missing(v) for v in interval):
        return float(interval[0]), float(interval[1])
    return None


def fmt_interval(value: Any, interval: Any, fmt: Any = fmt_num) -> str:
    """A score with its 95% interval: `0.874 [0.81, 0.93]` (the value alone when there is none)."""
    found = _interval_of(interval)
    if is_missing(value) or found is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(found[0])}, {fmt(found[1])}]"


def fmt_rate_interval(value: Any, interval: Any) -> str:
    """A rate with its 95% interval as ± percent of the value: `39.6 ±4%`; `469 [92, ∞)` when the timing was too
    noisy to bound it above."""
    if (isinstance(interval, list | tuple) and len(interval) == 2 and is_missing(interval[1])
            and not is_missing(interval[0]) and not is_missing(value)):
        return f"{fmt_rate(value)} [{fmt_rate(interval[0])}, ∞)"
    found = _interval_of(interval)
    if is_missing(value) or found is None or float(value) <= 0:
        return fmt_rate(value)
    half = (found[1] - found[0]) / 2 / float(value) * 100
    return f"{fmt_rate(value)} ±{half:.0f}%" if half >= 1 else f"{fmt_rate(value)} ±{half:.1f}%"
