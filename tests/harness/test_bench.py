"""`peftplan bench` end to end through real subprocesses and a real Optuna sqlite study: pruning, an
enforced memory cap (oom), a time limit (timeout), resume by re-running, and kill -9 mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from peftplan.results import TrialStatus, read_result
from tests.harness.tiny import write_suite
from tests.processes import processes_with

COUNTED = {"success", "pruned", "oom", "timeout", "failed"}
QUIET = {"eval": {"forgetting": None, "latency": None, "task_examples": 8, "loss_examples": 8},
         "training": {"threads": 1}}


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def results(run: Path) -> dict[str, object]:
    return {path.stem: read_result(path) for path in sorted((run / "trials").glob("*.json"))}


def test_bench_runs_prunes_writes_results_and_resumes_idempotently(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {
        "methods": [
            # A fast learner first, then a learning rate that cannot move the loss: the median pruner stops it.
            {"name": "lora", "trials": 2, "space": {"lr": {"low": 1.0e-7, "high": 0.1, "log": True}},
             "enqueue": [{"lr": 0.01}, {"lr": 1.0e-7}],
             "fixed": {"rank": 4, "targets": "all-linear", "dropout": 0.0, "alpha_ratio": 2}},
            {"name": "prompt", "fixed": {"virtual_tokens": 4}},
        ],
        "search": {"recipe": False, "pruner": {"kind": "median", "startup_trials": 1}},
        "training": {"steps": 6, "eval_every": 2, "threads": 1},
    })
    run = tmp_path / "run"
    done = bench(str(suite), "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    found = results(run)
    assert set(found) == {"lora-0", "lora-1", "prompt-0"}
    assert found["lora-0"].status == TrialStatus.SUCCESS and found["prompt-0"].status == TrialStatus.SUCCESS
    assert found["lora-1"].status == TrialStatus.PRUNED and found["lora-1"].params["lr"] == 1e-7
    first = found["lora-0"]
    assert first.config["rank"] == 4 and first.config_hash and first.provenance.device == "cpu"
    assert first.metrics.task_metric is not None and first.memory.peak_allocated > 0 and first.memory.rss_peak > 0
    assert [v.step for v in first.intermediate] == [2, 4, 6]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["suite_hash"] == first.suite_hash and manifest["studies"]["lora"] == "tiny-test/lora"
    table = pd.read_csv(run / "results.csv")
    assert len(table) == 3 and set(table["status"]) == {"success", "pruned"}
    study = optuna.load_study(study_name="tiny-test/lora", storage=f"sqlite:///{run / 'study.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "PRUNED"]
    assert "lora: best accuracy" in done.stdout

    before = {p.name: p.read_bytes() for p in (run / "trials").glob("*.json")}
    again = bench(str(suite), "--run-dir", str(run))  # re-running continues: here, nothing is left to do
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in (run / "trials").glob("*.json")} == before
    resumed = bench(str(run), "--resume")  # a run directory resumes with the suite it was started with
    assert resumed.returncode == 0, resumed.stderr

    changed = write_suite(tmp_path, {"training": {"steps": 7}}, name="other.yaml")
    refused = bench(str(changed), "--run-dir", str(run))
    assert refused.returncode == 2 and "different suite" in refused.stderr


def test_memory_cap_gives_oom_and_time_limit_gives_timeout(tmp_path: Path) -> None:
    capped = write_suite(tmp_path, {**QUIET, "budget": {"memory_cap": "200KiB"}}, name="capped.yaml")
    done = bench(str(capped), "--run-dir", str(tmp_path / "oom"))
    assert done.returncode == 1 and "no trial succeeded" in done.stderr
    (result,) = results(tmp_path / "oom").values()
    assert result.status == TrialStatus.OOM and "memory cap" in result.error

    slow = write_suite(tmp_path, {**QUIET, "budget": {"trial_timeout": 1}}, name="slow.yaml")
    done = bench(str(slow), "--run-dir", str(tmp_path / "timeout"))
    (result,) = results(tmp_path / "timeout").values()
    assert result.status == TrialStatus.TIMEOUT and "time limit" in result.error


def test_kill_9_mid_trial_then_resume_keeps_every_finished_trial(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {**QUIET, "search": {"trials": 3, "pruner": {"kind": "none"}},
                                   "training": {"steps": 300, "eval_every": 100, "threads": 1}})
    run = tmp_path / "run"
    runner = subprocess.Popen([sys.executable, "-m", "peftplan.cli", "bench", str(suite), "--run-dir", str(run)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first, second_log = run / "trials" / "lora-0.json", run / "work" / "lora-1" / "log.txt"
    deadline = time.monotonic() + 180
    while not (first.exists() and second_log.exists() and processes_with("work/lora-1/spec.json")):
        assert time.monotonic() < deadline and runner.poll() is None, "the first trial never finished"
        time.sleep(0.2)
    time.sleep(1.5)  # the second trial is importing or training now
    kept = first.read_bytes()
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    for _ in range(50):  # the orphaned trial dies with its runner (PR_SET_PDEATHSIG)
        if not processes_with("work/lora-1/spec.json"):
            break
        time.sleep(0.1)
    assert not processes_with("work/lora-1/spec.json")
    assert not (run / "trials" / "lora-1.json").exists()

    done = bench(str(suite), "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    assert first.read_bytes() == kept
    found = results(run)
    counted = [r for r in found.values() if r.status.value in COUNTED]
    assert len(counted) == 3
    assert found["lora-1"].status == TrialStatus.CANCELED and "heartbeat expired" in found["lora-1"].error
    retried = [r for r in counted if r.retry_of == 1]
    assert len(retried) == 1 and retried[0].params == found["lora-1"].params
    study = optuna.load_study(study_name="tiny-test/lora", storage=f"sqlite:///{run / 'study.db'}")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
