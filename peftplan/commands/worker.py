"""`peftplan worker --storage URL --study NAME`: pull trials of a shared study and run them here.

Any number of workers, on any number of machines, share one study in PostgreSQL (Optuna's RDB storage):
each trial is claimed in a database transaction, so it runs exactly once; a worker that dies stops
beating its heartbeat, and another one retries its trial after the grace period.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from peftplan.commands._interrupt import says_interrupted


@says_interrupted("interrupted (Ctrl-C); its trial is queued again with the same params: re-run the same command "
                  "(or any worker of the study) to continue")
def worker_command(
    storage: Annotated[str, typer.Option("--storage", help="The study's Optuna storage URL, e.g. postgresql://"
                                         "user@host/db.", show_default=False)],
    study: Annotated[str, typer.Option("--study", help="The suite name (all its methods) or one study "
                                       "SUITE/METHOD.", show_default=False)],
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Where this worker's result files go [default: runs/<suite>@<host>-<pid>]; "
                          "a shared directory works too.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code",
                                                    help="Allow the model's custom code (the suite must ask too).")]
    = False,
) -> None:
    """Join a distributed bench: run trials of a study another `peftplan bench --storage URL` started."""
    from peftplan.harness.checks import check_gpus
    from peftplan.harness.failsafe import run_to_end
    from peftplan.harness.progress import make_progress
    from peftplan.harness.published import load_published_suite, select_studies
    from peftplan.harness.rundir import open_run, study_name
    from peftplan.harness.runner import BenchRunner
    from peftplan.harness.trust import require_trust_flag
    from peftplan.storage_url import normalize_storage_url, open_storage

    url = normalize_storage_url(storage)
    optuna_storage = open_storage(url)
    loaded = load_published_suite(optuna_storage, study)
    require_trust_flag(loaded, trust_remote_code, where=f"the suite of study {study!r}")
    check_gpus(loaded.suite.training)
    names = {entry.key: study_name(loaded.suite.name, entry.key) for entry in loaded.suite.methods}
    selected = set(select_studies(list(names.values()), study))
    keys = [key for key, name in names.items() if name in selected]
    path = run_dir or Path("runs") / f"{loaded.suite.name}@{socket.gethostname()}-{os.getpid()}"
    run = open_run(path, loaded, storage_url=url, resume=False)
    trials = {entry.key: loaded.suite.trials_for(entry) for entry in loaded.suite.methods if entry.key in keys}
    progress = make_progress(list(trials), trials)
    progress.message(f"worker on {socket.gethostname()}: study {study}, run directory {run.path}")
    runner = BenchRunner(loaded, run, storage_url=url, progress=progress, join=True, only=keys)
    summary = run_to_end(runner, url, progress)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"worker {run.path}: ran {summary.trials_run} trial(s) here; {counts or 'no result files'}")
