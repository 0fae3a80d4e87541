"""Byte sizes ("24GiB", "512MB", 24 meaning GiB) and durations ("90s", "10m", "8h", 600 meaning seconds)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_bytes(value: object) -> int:
    """`24` (GiB), `"24GiB"`, `"512MB"`, `"1.5G"` -> bytes.

    Raises:
        ValueError: anything else, quoting the value.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 24GiB, got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value!r}")
        return int(value * 1024**3)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 24GiB or 512MiB, got {value!r}")
    number, unit = float(match.group(1)), (match.group(2) or "gib").lower()
    if number <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return int(number * _SIZE_FACTORS[unit])


def parse_seconds(value: object) -> float:
    """`600`, `"90s"`, `"10m"`, `"8h"` -> seconds.

    Raises:
        ValueError: anything else, quoting the value.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 90s, 10m or 8h, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds
