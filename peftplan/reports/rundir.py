"""Load one or more bench run directories (result files, resolved suite, study storage) into a `Run`.

A run directory (see `peftplan.harness.rundir`) holds `trials/<method>-<n>.json` (one result per
trial), `run.json` (suite name and hash, storage URL), the resolved `suite.json`, `study.db` (the Optuna
sqlite storage, unless the suite named another) and `results.csv`. Only the result files are required.
Several directories (e.g. one per worker sharing a study) merge into one run; a trial present in more
than one of them counts once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peftplan.errors import BadInputError
from peftplan.results import TrialResult, read_result

SUITE_FILES = ("suite.json", "suite.yaml", "suite.yml")
MANIFEST = "run.json"
STUDY_FILE = "study.db"


@dataclass(frozen=True)
class RunDir:
    """One run directory as found on disk."""

    path: Path
    label: str
    results: tuple[TrialResult, ...]
    suite_file: Path | None = None
    suite_hash: str | None = None
    storage: str | None = None  # the Optuna storage URL of its study, when the directory holds one


@dataclass
class Run:
    """The merged contents of one or more run directories."""

    dirs: list[RunDir]
    results: list[TrialResult]
    storages: list[str]
    notes: list[str] = field(default_factory=list)  # what was skipped and why, shown in the report
    origins: dict[tuple[str, str, int], str] = field(default_factory=dict)  # trial key -> directory label

    @property
    def label(self) -> str:
        return ", ".join(d.label for d in self.dirs)

    def origin(self, result: TrialResult) -> str:
        """The label of the directory `result` was read from."""
        return self.origins.get(trial_key(result), self.dirs[0].label)


def method_key(result: TrialResult) -> str:
    """The suite's name for the method entry (its label, e.g. 'lora-attn'), else the method's name."""
    return result.label or result.method


def trial_key(result: TrialResult) -> tuple[str, str, int]:
    """What identifies a trial across directories: its study, method entry and number."""
    return (result.study_name, method_key(result), result.trial_number)


def _manifest(path: Path, notes: list[str]) -> dict[str, object]:
    file = path / MANIFEST
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"ignored {file}: {exc}")
        return {}
    return data if isinstance(data, dict) else {}


def _storage(path: Path, manifest: dict[str, object], notes: list[str]) -> str | None:
    """The run's own study: its study.db, or a sqlite file run.json names; other databases need --storage."""
    if (path / STUDY_FILE).is_file():
        return f"sqlite:///{(path / STUDY_FILE).resolve()}"
    url = manifest.get("storage")
    if isinstance(url, str) and url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).is_file():
        return url
    if isinstance(url, str) and url and not url.startswith("sqlite"):
        # Never dial a database on our own (it may be remote, and run.json keeps no password).
        notes.append(f"{path.name}: its study lives in {url}; pass --storage URL to include Optuna history")
    return None


def _read_dir(path: Path, label: str, notes: list[str]) -> RunDir:
    if not path.exists():
        raise BadInputError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise BadInputError(f"{str(path)!r} is not a directory (expected a bench run directory)")
    files = sorted((path / "trials").glob("*.json")) if (path / "trials").is_dir() else []
    if not files:
        raise BadInputError(f"{str(path)!r} holds no trial results (expected trials/<method>-<n>.json)")
    results: list[TrialResult] = []
    for file in files:
        try:
            results.append(read_result(file))
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"skipped {label}/trials/{file.name}: {first}")
    if not results:
        raise BadInputError(f"{str(path)!r} holds no readable trial results ({len(files)} unreadable files)")
    suite = next((path / n for n in SUITE_FILES if (path / n).is_file()), None)
    manifest = _manifest(path, notes)
    suite_hash = manifest.get("suite_hash")
    return RunDir(path=path, label=label, results=tuple(results), suite_file=suite,
                  suite_hash=suite_hash if isinstance(suite_hash, str) else results[0].suite_hash,
                  storage=_storage(path, manifest, notes))


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct names: the directory name, or parent/name where two names collide."""
    names = [p.resolve().name or str(p) for p in paths]
    return [
        f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)
    ]


def _finished(result: TrialResult) -> str:
    return result.provenance.finished_at or result.provenance.started_at


def load_run(paths: Sequence[Path], *, storage: str | None = None) -> Run:
    """Read run directories and merge them.

    Args:
        paths: One or more run directories.
        storage: An Optuna storage URL to read studies from (e.g. the PostgreSQL a distributed
            run shared), used besides any `study.db` found in the directories.

    Returns:
        The merged run; `notes` lists skipped files and dropped duplicates.

    Raises:
        BadInputError: a path is missing, not a directory, or holds no readable result.
    """
    if not paths:
        raise BadInputError("give at least one run directory")
    notes: list[str] = []
    dirs = [_read_dir(Path(p), label, notes) for p, label in zip(paths, _labels(paths), strict=True)]
    by_key: dict[tuple[str, str, int], TrialResult] = {}
    origins: dict[tuple[str, str, int], str] = {}
    duplicates = 0
    for run_dir in dirs:
        for result in run_dir.results:
            key = trial_key(result)
            kept = by_key.get(key)
            if kept is not None:
                duplicates += 1
                if _finished(kept) >= _finished(result):
                    continue
            by_key[key], origins[key] = result, run_dir.label
    if duplicates:
        notes.append(f"{duplicates} trial result(s) found in more than one directory were counted once")
    storages = [d.storage for d in dirs if d.storage]
    if storage:
        storages.insert(0, storage)
    results = sorted(by_key.values(), key=lambda r: (method_key(r), r.study_name, r.trial_number))
    return Run(dirs=dirs, results=results, storages=list(dict.fromkeys(storages)), notes=notes, origins=origins)
