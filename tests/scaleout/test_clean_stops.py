"""Clean stops: a full disk, a storage that is unreachable or goes away mid-run, and Ctrl-C.

Each ends with one line on stderr, no partial result file, and a next start that resumes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from peftplan.results import TrialStatus, read_result
from peftplan.storage_url import normalize_storage_url
from tests.harness.tiny import write_suite
from tests.processes import processes_with
from tests.scaleout.helpers import ENV, QUIET, start, wait_for
from tests.scaleout.postgres import create_database, free_port, start_postgres

pytestmark = pytest.mark.timeout(240)
SLOW = {**QUIET, "training": {**QUIET["training"], "steps": 80, "eval_every": 40}}


def _no_partial_files(run: Path) -> None:
    assert not [p for p in run.rglob("*.tmp")], "a temporary file was left behind"
    for path in (run / "trials").glob("*.json"):
        read_result(path)  # every result file is whole and valid


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("peftplan:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and `unshare --mount` for a small private tmpfs")
def test_disk_full_mid_trial_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {**SLOW, "name": "disk-full"})
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
set -u
D={tmp_path}/mnt; mkdir -p $D; mount -t tmpfs -o size=16m tmpfs $D
{sys.executable} -m peftplan.cli bench {suite} --run-dir $D/run > {out}/first.log 2>&1 & pid=$!
while [ ! -e $D/run/work/lora-0/log.txt ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done
dd if=/dev/zero of=$D/filler bs=64k > /dev/null 2>&1
wait $pid; echo $? > {out}/first.rc
cp -r $D/run {out}/after-full
rm $D/filler
{sys.executable} -m peftplan.cli bench {suite} --run-dir $D/run > {out}/second.log 2>&1; echo $? > {out}/second.rc
cp -r $D/run {out}/resumed
"""
    subprocess.run(["unshare", "--mount", "sh", "-c", script], env=ENV, timeout=220, check=True)
    first = (out / "first.log").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first
    assert "disk full" in _one_line(first)
    _no_partial_files(out / "after-full")
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.log").read_text()
    _no_partial_files(out / "resumed")
    found = [read_result(p) for p in (out / "resumed" / "trials").glob("*.json")]
    assert [r.status for r in found if r.status != TrialStatus.CANCELED][-1:] == [TrialStatus.SUCCESS]


def test_unreachable_storage_stops_before_anything_is_written(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {**QUIET, "name": "unreachable"})
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/db"
    for argv in (["bench", str(suite), "--storage", url, "--run-dir", str(tmp_path / "run")],
                 ["worker", "--storage", url, "--study", "unreachable", "--run-dir", str(tmp_path / "w")]):
        done = subprocess.run([sys.executable, "-m", "peftplan.cli", *argv], capture_output=True, text=True,
                              env=ENV, timeout=60)
        assert done.returncode == 1 and "unreachable" in _one_line(done.stderr), done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "w").exists()


def test_storage_lost_mid_trial_stops_cleanly(tmp_path: Path) -> None:
    server, reason = start_postgres()
    if server is None:
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        url = create_database(server.url, "lost")
        suite = write_suite(tmp_path, {**SLOW, "name": "lost"})
        run = tmp_path / "run"
        bench = start("bench", str(suite), "--storage", url, "--run-dir", str(run), log=tmp_path / "b.log")
        wait_for(lambda: bool(processes_with(str(run / "work" / "lora-0" / "spec.json"))), 120, "a running trial")
        subprocess.run([*server.run_as, server.pg_ctl, "-D", str(server.data_dir), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, check=True)
        assert bench.wait(timeout=200) == 1
        text = (tmp_path / "b.log").read_text()
        assert "failed" in _one_line(text) and "resume" in text, text
        _no_partial_files(run)
        assert not list((run / "trials").glob("*.json"))
    finally:
        server.stop()


def test_ctrl_c_marks_the_trial_canceled_and_the_next_start_resumes(tmp_path: Path, postgres_url: str) -> None:
    suite = write_suite(tmp_path, {**SLOW, "name": "ctrl-c", "search": {**QUIET["search"], "trials": 1}})
    run = tmp_path / "run"
    bench = start("bench", str(suite), "--storage", postgres_url, "--run-dir", str(run), log=tmp_path / "b.log")
    wait_for(lambda: bool(processes_with(str(run / "work" / "lora-0" / "spec.json"))), 120, "a running trial")
    bench.send_signal(signal.SIGINT)
    assert bench.wait(timeout=60) == 130, (tmp_path / "b.log").read_text()
    canceled = read_result(run / "trials" / "lora-0.json")
    assert canceled.status == TrialStatus.CANCELED and "Ctrl-C" in (canceled.error or "")
    study = optuna.load_study(study_name="ctrl-c/lora", storage=normalize_storage_url(postgres_url))
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    again = start("bench", str(suite), "--storage", postgres_url, "--run-dir", str(run), log=tmp_path / "b2.log")
    assert again.wait(timeout=200) == 0, (tmp_path / "b2.log").read_text()
    assert read_result(run / "trials" / "lora-1.json").status == TrialStatus.SUCCESS
    assert [t.state.name for t in optuna.load_study(study_name="ctrl-c/lora", storage=normalize_storage_url(
        postgres_url)).trials] == ["FAIL", "COMPLETE"]
