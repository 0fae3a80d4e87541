"""A trial's outcome: what it measured so far, written as `outcome.json` however the trial ends.

It is the measured part of the result schema (`peftplan/results.py`), made of the same pieces under the same
field names: the trial fills it as it goes, and the runner puts it into the trial's result file next to what
the trial was (suite, method, config, params). Its own module so that the trial entry point and the multi-GPU
launcher (which merges the ranks' outcomes) both use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftplan.harness.provenance import now_iso, provenance
from peftplan.results import (
    Distributed,
    Forgetting,
    IntermediateValue,
    Latency,
    MemoryMeasurement,
    Metrics,
    Provenance,
    TrialStatus,
)

OUTCOME = "outcome.json"
FINISHED = frozenset({TrialStatus.SUCCESS, TrialStatus.PRUNED})  # a trial (or a rank) that ran to its end

__all__ = ["FINISHED", "OUTCOME", "TrialOutcome", "read_outcome"]


class TrialOutcome(BaseModel):
    """What a trial measured so far. Until it ends well, its status says `failed`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    status: TrialStatus = TrialStatus.FAILED
    error: str | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    forgetting: Forgetting | None = None
    latency: Latency | None = None
    memory: MemoryMeasurement | None = None
    distributed: Distributed | None = None
    intermediate: list[IntermediateValue] = Field(default_factory=list)
    provenance: Provenance

    @classmethod
    def start(cls, device: str) -> TrialOutcome:
        """An empty outcome of a trial starting now on `device`."""
        return cls(provenance=provenance(device, now_iso()))

    def measured(self) -> dict[str, object]:
        """The pieces a result file takes from its outcome as they are (metrics get the runner's wall time)."""
        return {name: getattr(self, name) for name in ("forgetting", "latency", "memory", "distributed",
                                                       "intermediate", "provenance")}

    def end(self) -> TrialOutcome:
        """Stamp the trial's end time (now); returns the outcome."""
        self.provenance.finished_at = now_iso()
        return self

    def write(self, path: Path) -> None:
        """Write atomically: a reader (the runner) sees the old file or the whole new one."""
        from peftplan.atomic import atomic_write_text

        atomic_write_text(path, self.model_dump_json(indent=2))


def read_outcome(path: Path) -> TrialOutcome | None:
    """The outcome at `path`; None when there is none (the trial died before writing it) or it is not one."""
    try:
        return TrialOutcome.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None
