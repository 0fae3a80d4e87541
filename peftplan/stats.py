"""Intervals that the harness and the reports both use: Student's t interval of a mean of repeated
measurements, and whether two intervals are apart (a difference worth claiming).

Every interval is `[low, high]` at 95%, stored next to its value as `<field>_ci`. The bootstrap intervals
of task metrics and forgetting are computed by the harness alone (`harness/stats.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (above: the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Interval = list[float]  # [low, high]


def t_interval(samples: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): Student's t interval of the mean of repeated measurements; None below two samples."""
    n = len(samples)
    if n < 2:
        return None
    mean = sum(samples) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    half = t * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def relative_half_width(interval: tuple[float, float, float] | None) -> float:
    """Half the interval's width over its mean (0.05: ±5%); infinite when unknown or the mean is not positive."""
    if interval is None or interval[0] <= 0:
        return math.inf
    mean, low, high = interval
    return (high - low) / 2 / mean


def separated(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    """Whether two [low, high] intervals do not overlap (a difference worth claiming)."""
    if a is None or b is None:
        return False
    return a[0] > b[1] or b[0] > a[1]
