"""Confidence intervals for what a trial measures, so that a report claims a difference only when it is one.

- Task metrics and forgetting: a percentile bootstrap over the eval examples (the probe's windows for
  forgetting, paired: each resample scores the same windows with and without the adapter), with a fixed seed,
  so the same measurements always give the same interval.
- Timings: Student's t interval of the mean of repeated timings (a bootstrap of 3-10 repeats is too narrow).

Every interval is `[low, high]` at 95%, stored next to its value as `<field>_ci`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (above: the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Interval = list[float]  # [low, high]


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, resamples: int = RESAMPLES,
              seed: int = SEED) -> Interval | None:
    """The 95% percentile interval of `statistic` over `n` examples resampled with replacement.

    `statistic` gets a (resamples, n) array of example indices and returns one value per row. None when there is
    nothing to resample (fewer than two examples).
    """
    import numpy as np

    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.asarray(statistic(rng.integers(0, n, size=(resamples, n))), dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - LEVEL) / 2
    return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]


def mean_ci(values: Sequence[float]) -> Interval | None:
    """Interval of a mean (accuracy and exact match: the mean of 0/1 per example)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: data[idx].mean(axis=1), len(data))


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float]) -> Interval | None:
    """Interval of sum(numerators) / sum(denominators) over resampled examples (e.g. loss per token)."""
    import numpy as np

    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bootstrap(lambda idx: num[idx].sum(axis=1) / den[idx].sum(axis=1), len(num))


def paired_ratio_delta_ci(adapted: Sequence[float], base: Sequence[float], tokens: Sequence[float]) -> Interval | None:
    """Interval of (sum adapted - sum base) / sum tokens: per-token loss with the adapter minus without, the
    same resampled windows on both sides (so the windows' own difficulty cancels)."""
    import numpy as np

    diff, count = np.asarray(adapted, dtype=float) - np.asarray(base, dtype=float), np.asarray(tokens, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bootstrap(lambda idx: diff[idx].sum(axis=1) / count[idx].sum(axis=1), len(diff))


def paired_mean_delta_ci(adapted: Sequence[float], base: Sequence[float]) -> Interval | None:
    """Interval of mean(adapted - base) over the same examples (lm-eval scores per document)."""
    import numpy as np

    diff = np.asarray(adapted, dtype=float) - np.asarray(base, dtype=float)
    return bootstrap(lambda idx: diff[idx].mean(axis=1), len(diff))


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
