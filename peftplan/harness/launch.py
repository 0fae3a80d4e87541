"""Start a trial subprocess, relay its events, enforce its time limit, and collect its outcome.

The subprocess gets its own session (Ctrl-C and signals go to the runner, which decides), and dies
with the runner (PR_SET_PDEATHSIG, set by the trial itself). A trial that outlives its time limit is
killed and reported as `timeout`; one that exits without an outcome file is `failed`, with the tail
of its log as the error.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peftplan.harness.channel import ENV, LAUNCHED_AT_ENV
from peftplan.harness.trial import ENTRY
from peftplan.harness.trial.outcome import OUTCOME, TrialOutcome, read_outcome
from peftplan.harness.trial.recipe import SPEC, TrialSpec


class TrialListener(Protocol):
    def on_event(self, event: dict[str, Any]) -> None:
        """Any event the trial sends (step, phase, eval)."""

    def should_prune(self, step: int, eval_loss: float) -> bool:
        """Answer to an intermediate eval loss."""


@dataclass
class LaunchResult:
    status: str  # the outcome's status, or timeout / failed when the process gave none
    outcome: TrialOutcome | None
    error: str | None
    wall_time_s: float
    returncode: int | None


def launch_trial(
    spec: TrialSpec,
    work_dir: Path,
    *,
    timeout: float | None,
    listener: TrialListener,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Run one trial to its end (or its time limit)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / SPEC
    spec_path.write_text(spec.model_dump_json(indent=2))
    (work_dir / OUTCOME).unlink(missing_ok=True)
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    child_env = {**os.environ, **(env or {}), ENV: f"{to_child_read},{from_child_write}",
                 LAUNCHED_AT_ENV: repr(time.time())}
    started = time.perf_counter()
    with open(work_dir / "log.txt", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", ENTRY, str(spec_path)],
            pass_fds=(to_child_read, from_child_write),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    os.close(to_child_read)
    os.close(from_child_write)
    timed_out = False
    try:
        timed_out = _relay(process, from_child_read, to_child_write, listener,
                           None if timeout is None else started + timeout)
    finally:
        if process.poll() is None:
            _kill(process)
        process.wait()
        os.close(from_child_read)
        try:
            os.close(to_child_write)
        except OSError:
            pass
    wall = time.perf_counter() - started
    if timed_out:
        return LaunchResult("timeout", read_outcome(work_dir / OUTCOME),
                            f"exceeded the trial time limit of {timeout:g} s", wall, process.returncode)
    outcome = read_outcome(work_dir / OUTCOME)
    if outcome is None:
        return LaunchResult("failed", None, _exit_reason(process.returncode, work_dir), wall, process.returncode)
    return LaunchResult(outcome.status.value, outcome, outcome.error, wall, process.returncode)


def _relay(process: subprocess.Popen[bytes], read_fd: int, write_fd: int, listener: TrialListener,
           deadline: float | None) -> bool:
    """Pass events until the trial closes its end; True if the deadline passed first."""
    selector = selectors.DefaultSelector()
    selector.register(read_fd, selectors.EVENT_READ)
    buffer = b""
    while True:
        wait = None if deadline is None else deadline - time.perf_counter()
        if wait is not None and wait <= 0:
            return True
        if not selector.select(timeout=min(wait, 1.0) if wait is not None else 1.0):
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return False
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            _handle(line, write_fd, listener)


def _handle(line: bytes, write_fd: int, listener: TrialListener) -> None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return
    listener.on_event(event)
    if event.get("event") == "eval":
        prune = listener.should_prune(int(event["step"]), float(event["eval_loss"]))
        try:
            os.write(write_fd, (json.dumps({"prune": prune}) + "\n").encode())
        except BrokenPipeError:
            pass


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_reason(returncode: int | None, work_dir: Path) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        reason = f"the trial process was killed by {name}{hint}"
    else:
        reason = f"the trial process exited with code {returncode} and no outcome"
    tail = log_tail(work_dir / "log.txt")
    return f"{reason}; log: {tail}" if tail else reason


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:500]
