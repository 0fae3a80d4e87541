"""The pipe between the runner and a trial subprocess: JSON lines each way.

The trial sends events (`step`, `eval`, `phase`); after each `eval` it waits for the runner's answer
`{"prune": bool}`, because only the runner talks to the Optuna study. The file descriptors are passed
with `pass_fds`, and named in the child's environment as `PEFTPLAN_TRIAL_FDS=read,write`.

A multi-GPU trial's rank 0 talks over the same pipe, though it is a grandchild: the launcher (torchrun) closes
inherited descriptors, so rank 0 reopens the trial process's ends through `/proc/<pid>/fd/<n>` (Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

ENV = "PEFTPLAN_TRIAL_FDS"
LAUNCHED_AT_ENV = "PEFTPLAN_LAUNCHED_AT"  # time.time() when the runner started the process
RANKS_OF_ENV = "PEFTPLAN_RANKS_OF"  # in the ranks of a multi-GPU trial: the pid of the trial process holding the pipe


class TrialChannel:
    """The trial's end. Without the environment variable (a trial run by hand) it is a no-op."""

    def __init__(self, read_fd: int | None, write_fd: int | None) -> None:
        self._reader = os.fdopen(read_fd, "r") if read_fd is not None else None
        self._writer = os.fdopen(write_fd, "w", buffering=1) if write_fd is not None else None

    @classmethod
    def from_env(cls) -> TrialChannel:
        value = os.environ.get(ENV)
        if not value:
            return cls(None, None)
        read_fd, write_fd = (int(part) for part in value.split(","))
        owner = os.environ.get(RANKS_OF_ENV)
        if owner and int(owner) != os.getpid():  # rank 0 of a multi-GPU trial (see the module docstring)
            read_fd = os.open(f"/proc/{owner}/fd/{read_fd}", os.O_RDONLY)
            write_fd = os.open(f"/proc/{owner}/fd/{write_fd}", os.O_WRONLY)
        return cls(read_fd, write_fd)

    def close(self) -> None:
        """Close this end; the runner reads the pipe's end as the trial's end, so only once the outcome is written."""
        for handle in (self._reader, self._writer):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._reader = self._writer = None

    def send(self, event: str, **fields: Any) -> None:
        if self._writer is not None:
            try:
                self._writer.write(json.dumps({"event": event, **fields}) + "\n")
            except BrokenPipeError:
                raise SystemExit("the runner went away") from None

    def ask_prune(self, step: int, eval_loss: float) -> bool:
        """Report an intermediate eval loss; True if the runner's pruner says stop."""
        self.send("eval", step=step, eval_loss=eval_loss)
        if self._reader is None:
            return False
        line = self._reader.readline()
        if not line:
            raise SystemExit("the runner went away")
        return bool(json.loads(line).get("prune", False))
