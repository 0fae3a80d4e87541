"""Distributed search on a real PostgreSQL: one `peftplan bench --storage URL` and `peftplan worker`s.

Three runners share one study of 12 trials; then a worker is killed with SIGKILL in the middle of a
trial and another runner finishes the study. Real subprocesses, real trials on a tiny random Llama.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from peftplan.reports.rundir import load_run
from peftplan.results import TrialStatus
from peftplan.storage_url import normalize_storage_url
from tests.harness.tiny import write_suite
from tests.processes import processes_with
from tests.scaleout.helpers import QUIET, results_by_dir, start, study_ready, wait_for

COUNTED = {"success", "pruned", "oom", "timeout", "failed"}
pytestmark = pytest.mark.timeout(300)


def test_three_runners_share_a_postgres_study_and_run_each_trial_once(tmp_path: Path, postgres_url: str) -> None:
    suite = write_suite(tmp_path, {**QUIET, "name": "pg-share", "search": {**QUIET["search"], "trials": 12}})
    url = normalize_storage_url(postgres_url)
    dirs = [tmp_path / "bench", tmp_path / "worker-1", tmp_path / "worker-2"]
    bench = start("bench", str(suite), "--storage", postgres_url, "--run-dir", str(dirs[0]), log=tmp_path / "b.log")
    wait_for(lambda: study_ready(url, "pg-share/lora"), 120, "the bench to create the study")
    workers = [start("worker", "--storage", postgres_url, "--study", "pg-share", "--run-dir", str(d),
                     log=tmp_path / f"w{i}.log") for i, d in enumerate(dirs[1:], 1)]
    for i, proc in enumerate([bench, *workers]):
        assert proc.wait(timeout=280) == 0, (tmp_path / ["b.log", "w1.log", "w2.log"][i]).read_text()[-2000:]

    found = results_by_dir(dirs)
    names = [name for per_dir in found.values() for name in per_dir]
    assert sorted(names) == sorted(f"lora-{n}" for n in range(12)), names  # each number once, none missing
    assert all(r.status == TrialStatus.SUCCESS for d in found.values() for r in d.values())
    assert sum(1 for d in found.values() if d) >= 2, {str(d): list(r) for d, r in found.items()}  # shared work
    print("trials per runner:", {d.name: sorted(r) for d, r in found.items()})
    study = optuna.load_study(study_name="pg-share/lora", storage=url)
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert all(t.state.name == "COMPLETE" for t in study.trials)

    merged = load_run(dirs, storage=postgres_url)
    assert len(merged.results) == 12
    best = max(merged.results, key=lambda r: (r.metrics.task_metric or -1.0, -r.trial_number))
    assert study.best_value == best.metrics.task_metric
    tied = [r.trial_number for r in merged.results if r.metrics.task_metric == study.best_value]
    assert study.best_trial.number in tied and study.best_trial.params == next(
        r.params for r in merged.results if r.trial_number == study.best_trial.number)
    report = subprocess.run([sys.executable, "-m", "peftplan.cli", "report", *map(str, dirs), "--storage",
                             postgres_url, "--format", "md", "-o", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "could not read Optuna storage" not in text and "not found in" not in text


def test_worker_killed_mid_trial_is_retried_by_another_runner(tmp_path: Path, postgres_url: str) -> None:
    suite = write_suite(tmp_path, {**QUIET, "name": "pg-kill", "search": {**QUIET["search"], "trials": 4},
                                   "training": {**QUIET["training"], "steps": 60, "eval_every": 30}})
    url = normalize_storage_url(postgres_url)
    bench_dir, worker_dir = tmp_path / "bench", tmp_path / "victim"
    bench = start("bench", str(suite), "--storage", postgres_url, "--run-dir", str(bench_dir), log=tmp_path / "b.log")
    wait_for(lambda: study_ready(url, "pg-kill/lora"), 120, "the bench to create the study")
    victim = start("worker", "--storage", postgres_url, "--study", "pg-kill/lora", "--run-dir", str(worker_dir),
                   log=tmp_path / "victim.log")

    def victim_training() -> bool:
        # The victim's trial is past its imports: its log shows a training step.
        logs = list((worker_dir / "work").glob("lora-*/log.txt")) if (worker_dir / "work").is_dir() else []
        running = [p.parent for p in logs if not (worker_dir / "trials" / f"{p.parent.name}.json").exists()]
        return any(processes_with(str(d / "spec.json")) for d in running) and victim.poll() is None

    wait_for(victim_training, 150, "the worker to be in the middle of a trial")
    kept = {p.name: p.read_bytes() for p in (worker_dir / "trials").glob("*.json")}
    held = [p.parent.name for p in (worker_dir / "work").glob("lora-*/log.txt")
            if p.parent.name + ".json" not in kept]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_for(lambda: not processes_with(str(worker_dir / "work")), 10, "the orphaned trial to die with its worker")

    assert bench.wait(timeout=280) == 0, (tmp_path / "b.log").read_text()[-2000:]
    (killed_name,) = held
    killed = int(killed_name.rsplit("-", 1)[1])
    found = results_by_dir([bench_dir, worker_dir])
    assert {p.name: p.read_bytes() for p in (worker_dir / "trials").glob("*.json")} == kept  # completed kept
    assert killed_name not in found[worker_dir]  # the killed worker left no partial result file
    every = {**found[worker_dir], **found[bench_dir]}
    assert len(every) == len(found[worker_dir]) + len(found[bench_dir])  # no trial in two directories
    assert every[killed_name].status == TrialStatus.CANCELED and "heartbeat expired" in every[killed_name].error
    counted = [r for r in every.values() if r.status.value in COUNTED]
    assert len(counted) == 4
    (retry,) = [r for r in counted if r.retry_of == killed]
    assert retry.params == every[killed_name].params and retry.status == TrialStatus.SUCCESS
    study = optuna.load_study(study_name="pg-kill/lora", storage=url)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    assert len(study.trials) == 5  # four trials plus the one retried copy, nothing more
