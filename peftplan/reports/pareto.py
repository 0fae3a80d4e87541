"""The Pareto front of a better-is-higher score against a cost (e.g. task metric against peak memory)."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(score: Sequence[float], cost: Sequence[float], *, higher_is_better: bool = True) -> list[bool]:
    """True where no other point is at least as good on both axes and strictly better on one.

    Args:
        score: The quality of each point (maximised unless `higher_is_better` is False).
        cost: What each point costs (always minimised).

    Returns:
        One flag per point; equal points are all on the front.
    """
    if len(score) != len(cost):
        raise ValueError(f"score and cost differ in length: {len(score)} != {len(cost)}")
    sign = 1.0 if higher_is_better else -1.0
    points = [(sign * float(s), float(c)) for s, c in zip(score, cost, strict=True)]
    mask = []
    for s, c in points:
        dominated = any(s2 >= s and c2 <= c and (s2 > s or c2 < c) for s2, c2 in points)
        mask.append(not dominated)
    return mask
