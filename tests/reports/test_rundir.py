"""Loading run directories: what counts as a run, merging several, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftplan.errors import BadInputError
from peftplan.reports.rundir import load_run
from tests.reports.fixtures import expected_results


def test_loads_every_result_and_the_study(run_dir: Path) -> None:
    run = load_run([run_dir])
    assert len(run.results) == len(expected_results(run_dir)) == 13
    assert run.storages == [f"sqlite:///{(run_dir / 'study.db').resolve()}"]
    assert run.dirs[0].suite_file == run_dir / "suite.json"
    assert run.dirs[0].suite_hash == json.loads((run_dir / "run.json").read_text())["suite_hash"]
    assert run.notes == []


def test_a_study_in_another_database_is_never_dialled_unasked(run_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(run_dir / "trials", tmp_path / "run" / "trials")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"suite_hash": "abc",
                                                           "storage": "postgresql://bench:***@db:5432/optuna"}))
    run = load_run([tmp_path / "run"])
    assert run.storages == [] and run.dirs[0].suite_hash == "abc"
    assert "pass --storage URL" in run.notes[0]


def test_merging_worker_directories_counts_each_trial_once(run_dir: Path, tmp_path: Path) -> None:
    # Two workers of one study: each holds part of the trials, and one trial is in both.
    a, b = tmp_path / "worker-a", tmp_path / "worker-b"
    for worker in (a, b):
        (worker / "trials").mkdir(parents=True)
    files = sorted((run_dir / "trials").glob("*.json"))
    for i, file in enumerate(files):
        shutil.copy(file, (a if i % 2 else b) / "trials" / file.name)
    shutil.copy(files[0], a / "trials" / files[0].name)
    run = load_run([a, b], storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(run.results) == len(files)
    assert {run.origin(r) for r in run.results} == {"worker-a", "worker-b"}
    assert any("counted once" in note for note in run.notes)
    assert run.storages[0].endswith("study.db")


def test_same_named_directories_get_distinct_labels(run_dir: Path, tmp_path: Path) -> None:
    for host in ("host1", "host2"):
        shutil.copytree(run_dir / "trials", tmp_path / host / "run" / "trials")
    run = load_run([tmp_path / "host1" / "run", tmp_path / "host2" / "run"])
    assert [d.label for d in run.dirs] == ["host1/run", "host2/run"]


def test_an_unreadable_result_is_skipped_with_a_note(run_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(run_dir / "trials", tmp_path / "run" / "trials")
    (tmp_path / "run" / "trials" / "lora-9.json").write_text('{"schema_version": 1, "half": ')
    run = load_run([tmp_path / "run"])
    assert len(run.results) == 13
    assert len(run.notes) == 1 and "lora-9.json" in run.notes[0]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is not a directory"),
        (lambda p: p, "holds no trial results"),
        (lambda p: (p / "trials").mkdir() or (p / "trials" / "a-0.json").write_text("{}") and p,
         "no readable trial results"),
    ],
)
def test_bad_run_directories(tmp_path: Path, make, expected: str) -> None:
    with pytest.raises(BadInputError, match=expected) as info:
        load_run([make(tmp_path)])
    assert "\n" not in str(info.value)
