"""Tie a trial's processes to the process that started them, so that none outlives the runner (Linux).

The runner kills a trial's whole process group, but a multi-GPU trial's ranks are out of its reach: torch
elastic starts each rank in a session of its own. So every process in the chain asks the kernel for SIGKILL
when its parent dies (PR_SET_PDEATHSIG). That request only covers a parent dying after it was made: a rank
whose launcher died earlier (between its start and the request) has already been handed to another parent,
so it checks right after the request that its launcher is still the trial process's child, and exits if not.
Nothing here imports more than the standard library: the trial's `main` calls it first, before torch is imported.
"""

from __future__ import annotations

import logging
import os

_log = logging.getLogger(__name__)


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to kill this process when its parent dies (kill -9 included).

    `parent`: the pid this process's parent must have; if it has another already (the parent died before the
    request), exit at once.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent is gone; nothing of ours to clean up yet


def exit_if_orphaned_rank(trial_pid: int) -> None:
    """In a rank, after `die_with_parent()`: exit unless its parent (the launcher) is the trial process's child."""
    launcher = os.getppid()
    if parent_pid(launcher) == trial_pid:
        return
    _log.warning("rank %s: the trial process %s no longer runs its launcher %s; exiting",
                 os.environ.get("RANK", "?"), trial_pid, launcher)
    os._exit(1)


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (from /proc), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None
