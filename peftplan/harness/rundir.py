"""The run directory: everything a bench run leaves behind, and what `peftplan report` reads.

```
RUN/
  run.json                 suite name and hash, where the suite came from, storage URL, study per method
  suite.json               the resolved suite (every default filled in)
  study.db                 the Optuna study (sqlite), unless storage.url points elsewhere
  data/                    train.jsonl, eval.jsonl, task.json, probe.txt: the exact split every trial used
  trials/<method>-<n>.json one result file per trial (peftplan.results schema), written atomically
  work/<method>-<n>/       the trial's spec, outcome and log
  results.csv              every result flattened, one row per trial (and results.parquet with pyarrow)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftplan.atomic import atomic_path, atomic_write_text
from peftplan.errors import BadInputError
from peftplan.harness.provenance import now_iso, peftplan_version
from peftplan.harness.suite import LoadedSuite
from peftplan.storage_url import redact


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def trials_dir(self) -> Path:
        return self.path / "trials"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def manifest_path(self) -> Path:
        return self.path / "run.json"

    def trial_path(self, key: str, number: int) -> Path:
        return self.trials_dir / f"{key}-{number}.json"

    def work_dir(self, key: str, number: int) -> Path:
        return self.path / "work" / f"{key}-{number}"

    def default_storage(self) -> str:
        return f"sqlite:///{(self.path / 'study.db').resolve()}"

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def result_paths(self) -> list[Path]:
        return sorted(self.trials_dir.glob("*.json")) if self.trials_dir.is_dir() else []


def study_name(suite_name: str, key: str) -> str:
    return f"{suite_name}/{key}"


def open_run(path: Path, loaded: LoadedSuite, *, storage_url: str | None, resume: bool) -> RunDir:
    """Create the run directory, or reopen it for the same suite.

    Raises:
        BadInputError: the directory holds a different suite, or `resume` without a run to resume.
    """
    run = RunDir(path.resolve())
    suite = loaded.suite
    if run.exists():
        manifest = run.manifest()
        if manifest.get("suite_hash") != loaded.hash:
            raise BadInputError(
                f"{run.path} holds a run of a different suite (hash {manifest.get('suite_hash')}, this one "
                f"{loaded.hash}); choose another --run-dir, or re-run the original suite to continue it"
            )
        return run
    if resume:
        raise BadInputError(f"--resume: {run.path} holds no run to resume")
    if run.path.exists() and any(run.path.iterdir()):
        raise BadInputError(f"{run.path} exists and is not a peftplan run directory; choose another --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    run.trials_dir.mkdir(exist_ok=True)
    write_json_atomic(run.path / "suite.json", loaded.normalized())
    write_json_atomic(
        run.manifest_path,
        {
            "suite_name": suite.name,
            "suite_hash": loaded.hash,
            "suite_file": str(loaded.source),
            "suite_dir": str(loaded.base_dir),
            "created_at": now_iso(),
            "peftplan_version": peftplan_version(),
            "storage": redact(storage_url or run.default_storage()),
            "studies": {entry.key: study_name(suite.name, entry.key) for entry in suite.methods},
            "methods": {entry.key: entry.name for entry in suite.methods},
        },
    )
    return run


def write_tables(run: RunDir) -> list[Path]:
    """Flatten every result file into results.csv (and results.parquet when pyarrow is installed)."""
    import pandas as pd

    rows = []
    for path in run.result_paths():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # never half-written (atomic), but tolerate a foreign file
        data.pop("intermediate", None)
        rows.append(data)
    if not rows:
        return []
    frame = pd.json_normalize(rows, sep=".")
    frame = frame.sort_values(["method", "trial_number"]).reset_index(drop=True)
    written = [run.path / "results.csv"]
    with atomic_path(written[0]) as tmp:
        frame.to_csv(tmp, index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    parquet = run.path / "results.parquet"
    with atomic_path(parquet) as tmp:
        frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(tmp, index=False)
    return [*written, parquet]
