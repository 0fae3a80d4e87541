"""Atomic file writes: a reader sees the old file or the whole new one, and a failed write leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary name in the same directory, then rename it over `path`.

    The temporary name carries the pid, so processes sharing a run directory never collide; it is
    removed when the write fails (e.g. the disk is full).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
