"""A trial's outcome file: what it measured so far, written as `outcome.json` however the trial ends.

Its own module so that the trial entry point and the multi-GPU launcher (which merges the ranks'
outcomes) both use it without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftplan.harness.provenance import now_iso, provenance

OUTCOME = "outcome.json"

__all__ = ["OUTCOME", "Outcome"]


class Outcome:
    """What a trial measured so far; written as `outcome.json` when the trial ends, however it ends."""

    def __init__(self, device: str) -> None:
        self.data: dict[str, Any] = {
            "status": "failed",
            "error": None,
            "metrics": {},
            "forgetting": None,
            "latency": None,
            "memory": None,
            "distributed": None,
            "intermediate": [],
            "provenance": provenance(device, now_iso()),
        }

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def write(self, path: Path) -> None:
        self.data["provenance"]["finished_at"] = now_iso()
        from peftplan.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.data, indent=2, default=float))
