"""Processes and files of distributed-bench tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from peftplan.results import TrialResult, read_result

QUIET = {
    "eval": {"forgetting": None, "latency": None, "task_examples": 8, "loss_examples": 8},
    "search": {"pruner": {"kind": "none"}},
    "training": {"threads": 1, "steps": 2, "eval_every": 2},
    "storage": {"heartbeat_interval": 1, "grace_period": 3},
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "peftplan.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=ENV)


def wait_for(predicate: object, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def study_ready(url: str, name: str) -> bool:
    import optuna

    try:
        return name in optuna.get_all_study_names(storage=url)
    except Exception:
        return False


def results_by_dir(dirs: list[Path]) -> dict[Path, dict[str, TrialResult]]:
    return {d: {p.stem: read_result(p) for p in sorted((d / "trials").glob("*.json"))} for d in dirs}


