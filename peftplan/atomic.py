"""Atomic file writes: a reader sees the old file or the whole new one, and a failed write leaves nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed over `path` when the block succeeds.

    The temporary name carries the pid, so processes sharing a directory never collide; it is removed
    when the write fails (e.g. the disk is full).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    """Write `text` atomically to `path` (and with `fsync`, to the disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
