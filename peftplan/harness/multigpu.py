"""Launch a trial's ranks through `accelerate launch`, then merge what they wrote into one outcome.

A trial with `training.gpus: N > 1` runs as a chain of processes, each dying with its parent
(PR_SET_PDEATHSIG, `harness/lifeline.py`), so a killed runner or a trial timeout ends every rank:

    runner -> trial process -> accelerate launch --multi_gpu --num_processes N -> N ranks

Each rank is `python -m peftplan.harness.trial.entry` again; `RANKS_OF_ENV` (the trial process's pid) tells it that it
is a rank (`harness/ranks.py`). On a host without CUDA, `ACCELERATE_USE_CPU=1` turns the same command into N CPU
processes on gloo (accelerate's MULTI_CPU mode): that is the path the tests run.

Every rank writes `outcome-rank<r>.json`, whatever happens. Only this process writes the trial's `outcome.json`,
after the launcher returned and the ranks' outcomes were merged: the runner takes that file as final, so a chain
that dies before the merge leaves none, and the trial is queued again rather than recorded from one rank's view.
A rank that fails exits non-zero, which makes the launcher stop the other ranks (SIGTERM) at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from peftplan.harness.channel import RANKS_OF_ENV
from peftplan.harness.ranks import rank_outcome_name
from peftplan.harness.trial import ENTRY
from peftplan.harness.trial.outcome import FINISHED, OUTCOME, TrialOutcome, read_outcome
from peftplan.results import TrialStatus

if TYPE_CHECKING:
    from peftplan.harness.suite import TrainingSection


def accelerate_command(spec_path: Path, processes: int, port: int) -> list[str]:
    """The `accelerate launch` command line for `processes` ranks of the trial in `spec_path`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", ENTRY, str(spec_path)]


def run_ranks(spec_path: Path, training: TrainingSection, *, device: str, threads: int | None) -> None:
    """Run the trial's ranks to their end and write the merged outcome to `outcome.json`.

    The ranks' output goes to this process's own (the trial's log). Without CUDA the ranks are CPU processes
    sharing this host's cores: `threads` (the cores the runner gave the trial) are split between them.
    """
    from peftplan.errors import BadInputError
    from peftplan.harness.checks import check_gpus
    from peftplan.harness.lifeline import die_with_parent

    work_dir = spec_path.parent
    processes = training.gpus
    for rank in range(processes):
        (work_dir / rank_outcome_name(rank)).unlink(missing_ok=True)
    try:
        check_gpus(training)  # `bench` and `worker` checked it already; this host may have changed since
    except BadInputError as exc:
        write_merged(work_dir, {}, device, str(exc))
        return
    env = {**os.environ, RANKS_OF_ENV: str(os.getpid())}
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = str(max(1, (threads or os.cpu_count() or 1) // processes))
    sys.stdout.flush()  # the ranks write to the same log
    me = os.getpid()
    done = subprocess.run(accelerate_command(spec_path, processes, _free_port()), env=env,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(me))
    outcomes = {rank: read_outcome(work_dir / rank_outcome_name(rank)) for rank in range(processes)}
    reason = f"accelerate launch exited with code {done.returncode}" if done.returncode else None
    write_merged(work_dir, outcomes, device, reason)


def write_merged(work_dir: Path, outcomes: dict[int, TrialOutcome | None], device: str,
                 launch_problem: str | None) -> None:
    """Write `outcome.json`: rank 0's outcome when it finished; else `oom` if any rank ran out of memory,
    else `failed`, with every rank's error.

    Once rank 0 finished, every rank had done its part (rank 0 gathered their peaks after training).
    """
    rank0 = outcomes.get(0)
    if rank0 is not None and rank0.status in FINISHED:
        rank0.write(work_dir / OUTCOME)  # as rank 0 wrote it
        return
    failures = {rank: o for rank, o in outcomes.items() if o is not None and o.status not in FINISHED}
    missing = sorted(rank for rank, o in outcomes.items() if o is None)
    merged = rank0.model_copy(deep=True) if rank0 is not None else TrialOutcome.start(device)
    oom = any(o.status == TrialStatus.OOM for o in failures.values())
    merged.status = TrialStatus.OOM if oom else TrialStatus.FAILED
    # The other ranks' errors first: rank 0's is often only the echo of a peer that went away.
    errors = [f"rank {rank}: {failures[rank].error}" for rank in sorted(failures, key=lambda r: (r == 0, r))]
    if missing:
        errors.append(f"no outcome from rank(s) {', '.join(map(str, missing))}")
    if launch_problem:
        errors.append(launch_problem)
    merged.error = "; ".join(errors)[:2000]
    merged.end().write(work_dir / OUTCOME)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
