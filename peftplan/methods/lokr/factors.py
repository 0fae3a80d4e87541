"""How LyCORIS and peft split a Linear's side into the two Kronecker factors."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1024)  # a plan asks for the same few widths thousands of times
def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into two factors the way LyCORIS and peft do (the first <= the second)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m, n = 1, dimension
    initial_length = m + n  # peft compares against the starting sum, not the running one
    while m < n:
        candidate = m + 1
        while dimension % candidate != 0:
            candidate += 1
        partner = dimension // candidate
        if candidate + partner > initial_length or candidate > limit:
            break
        m, n = candidate, partner
    return (n, m) if m > n else (m, n)
