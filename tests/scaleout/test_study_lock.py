"""Two `peftplan bench` started at the same moment on one new study enqueue its trials once.

Real processes on a real PostgreSQL (advisory lock) and on one SQLite file (file lock). The benches stop
right after setting up (`budget.total_time` of a millisecond), so the study holds exactly what was enqueued.
A lock held by someone else is waited for a bounded time, then named in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from peftplan.harness.studylock import StudyLockTimeout, lock_key, study_lock
from peftplan.harness.workqueue import FILLED_ATTR
from peftplan.storage_url import normalize_storage_url
from tests.harness.tiny import write_suite
from tests.scaleout.helpers import QUIET, start

pytestmark = pytest.mark.timeout(180)
TRIALS = 6


def _start_together(tmp_path: Path, storage: str, starters: int = 2) -> None:
    suite = write_suite(tmp_path, {**QUIET, "name": "race", "search": {**QUIET["search"], "trials": TRIALS},
                                   "budget": {"total_time": "0.001s"}})
    benches = [start("bench", str(suite), "--storage", storage, "--run-dir", str(tmp_path / f"bench-{i}"),
                     log=tmp_path / f"bench-{i}.log") for i in range(starters)]
    for i, bench in enumerate(benches):
        assert bench.wait(timeout=150) == 0, (tmp_path / f"bench-{i}.log").read_text()[-2000:]


def _assert_enqueued_once(url: str) -> None:
    study = optuna.load_study(study_name="race/lora", storage=url)
    states = [t.state.name for t in study.trials]
    assert len(states) == TRIALS, states  # not 2 x TRIALS
    assert sorted(t.number for t in study.trials) == list(range(TRIALS))
    assert sum(1 for t in study.trials if t.user_attrs.get("peftplan_recipe")) == 1
    assert study.user_attrs[FILLED_ATTR]["trials"] == TRIALS


def test_two_benches_starting_together_on_postgres_enqueue_once(tmp_path: Path, postgres_url: str) -> None:
    _start_together(tmp_path, postgres_url)
    _assert_enqueued_once(normalize_storage_url(postgres_url))


def test_two_benches_starting_together_on_sqlite_enqueue_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _start_together(tmp_path, url)
    _assert_enqueued_once(url)


def test_a_held_postgres_lock_times_out_naming_the_study_and_its_holder(postgres_url: str) -> None:
    import psycopg2

    url = normalize_storage_url(postgres_url)
    holder = psycopg2.connect(postgres_url, application_name="the other bench")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (lock_key("race/lora"),))
        with pytest.raises(StudyLockTimeout) as caught, study_lock(url, "race/lora", timeout=0.5):
            pytest.fail("the lock was held by another connection")
        message = str(caught.value)
        assert message.startswith("study 'race/lora': waited 0.5 s for its set-up lock on postgresql")
        assert "held by the other bench (server backend" in message and "\n" not in message
    finally:
        holder.close()  # the server releases the lock with the connection
    with study_lock(url, "race/lora", timeout=0.5):
        pass


def test_a_held_sqlite_lock_times_out_and_no_file_locks_only_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import fcntl

    url = f"sqlite:///{tmp_path / 'study.db'}"
    with open(tmp_path / "study.db.lock", "a") as other:  # another open file: flock treats it as another holder
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(StudyLockTimeout, match=r"study 'race/lora': waited 0.2 s for the lock on .*study.db.lock"), \
                study_lock(url, "race/lora", timeout=0.2):
            pass
        monkeypatch.setitem(sys.modules, "fcntl", None)  # as on a host without fcntl: no lock, and a note
        with study_lock(url, "race/lora", timeout=0.2):
            pass
    # Library code logs the note (the CLI prints it as one line on stderr).
    assert "note: no file locks on" in caplog.text
