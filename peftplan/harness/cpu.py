"""How many CPU cores a trial can use right now.

torch runs one OpenMP thread per core. When another process keeps a core busy, those threads wait on
each other at every parallel region, and a training step gets several times slower than with one
thread fewer (measured on the 2-core reference machine: 6.6 s against 1.1 s per SmolLM2 LoRA step).
So, unless a suite fixes `training.threads`, each trial gets the cores that were idle just before it
started, measured from /proc/stat, and at least one.
"""

from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs, or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def idle_cores(sample_s: float = 0.3) -> int:
    """Cores idle over a short sample (at least 1, at most the usable cores)."""
    cores = usable_cores()
    first = _cpu_times()
    if first is None:
        return cores
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] == first[1]:
        return cores
    idle_share = (second[0] - first[0]) / (second[1] - first[1])
    return max(1, min(cores, round(idle_share * (os.cpu_count() or cores))))
