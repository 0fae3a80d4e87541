"""Two `peftplan bench` started at the same moment on one new study enqueue its trials once.

Real processes on a real PostgreSQL (advisory lock) and on one SQLite file (file lock). The benches stop
right after setting up (`budget.total_time` of a millisecond), so the study holds exactly what was enqueued.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from peftplan.harness.storage_url import normalize_storage_url
from peftplan.harness.workqueue import FILLED_ATTR
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
