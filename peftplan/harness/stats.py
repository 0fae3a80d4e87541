"""Bootstrap intervals for what a trial scores, so that a report claims a difference only when it is one.

Task metrics and forgetting get a percentile bootstrap over the eval examples (the probe's windows for
forgetting, paired: each resample scores the same windows with and without the adapter), with a fixed seed,
so the same measurements always give the same interval.

Timings get Student's t interval of the mean of repeated timings instead (a bootstrap of 3-10 repeats is too
narrow): `t_interval` in `peftplan/stats.py`, which the reports use too. Every interval is `[low, high]` at 95%,
stored next to its value as `<field>_ci`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from peftplan.stats import LEVEL, Interval

if TYPE_CHECKING:
    import numpy as np

RESAMPLES = 2000
SEED = 0


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
