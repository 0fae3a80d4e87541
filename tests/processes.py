"""Finding the processes a test started (trials, workers) by a marker in their command line."""

from __future__ import annotations

from pathlib import Path


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids
