"""`peftplan bench SUITE`: run a suite's Optuna searches and measure every trial."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from peftplan.commands._interrupt import says_interrupted

if TYPE_CHECKING:
    from peftplan.harness.suite import LoadedSuite

@says_interrupted("interrupted (Ctrl-C); re-run the same command to resume: finished trials are kept and the "
                  "interrupted trial runs again")
def bench_command(
    suite: Annotated[Path, typer.Argument(help="The suite YAML file, or a run directory to resume.",
                                          show_default=False)],
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where results go (default: runs/<suite name>).")]
    = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing run (re-running also continues).")]
    = False,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: sqlite in the run); "
                                                "postgresql://... lets `peftplan worker`s on other hosts join.")]
    = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code",
                                                    help="Allow the model's custom code (the suite must ask too).")]
    = False,
) -> None:
    """Benchmark PEFT methods on a task: search, train, and measure accuracy, forgetting, latency and memory."""
    from peftplan.errors import PeftplanError
    from peftplan.harness.checks import check_gpus, check_suite
    from peftplan.harness.failsafe import run_to_end
    from peftplan.harness.progress import make_progress
    from peftplan.harness.rundir import open_run
    from peftplan.harness.runner import BenchRunner
    from peftplan.harness.trust import require_trust_flag
    from peftplan.storage_url import check_reachable, normalize_storage_url

    loaded, run_path = _locate(suite, run_dir)
    require_trust_flag(loaded, trust_remote_code)
    # Multi-GPU trials: the data is rendered now, so that too few examples for the ranks are refused up front.
    notes = check_suite(loaded, check_data=loaded.suite.training.gpus > 1)
    check_gpus(loaded.suite.training)
    url = storage or loaded.suite.storage.url
    if url is not None:
        check_reachable(normalize_storage_url(url, option="--storage" if storage else "storage.url"))
    run_path = run_path or Path("runs") / loaded.suite.name
    run = open_run(run_path, loaded, storage_url=storage, resume=resume)
    trials = {entry.key: loaded.suite.trials_for(entry) for entry in loaded.suite.methods}
    progress = make_progress(list(trials), trials)
    for note in notes:
        progress.message(note)
    progress.message(f"run directory: {run.path}")
    runner = BenchRunner(loaded, run, storage_url=storage, progress=progress)
    summary = run_to_end(runner, runner.storage_url, progress)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"run {run.path}: {counts or 'no trials'}")
    for key in trials:
        best = summary.best.get(key)
        if best is None:
            print(f"  {key}: no successful trial")
        else:
            print(f"  {key}: best {best['metric']} {best['task_metric']:.4f} (trial {best['trial']}, {best['params']})")
    if summary.counts and not summary.best:
        raise PeftplanError(f"no trial succeeded; see the logs in {run.path / 'work'}")


def _locate(suite: Path, run_dir: Path | None) -> tuple[LoadedSuite, Path | None]:
    """A suite file, or a run directory: then the resolved suite it was started with (`run/suite.json`)."""
    from peftplan.harness.suite import LoadedSuite, load_suite, parse_suite

    if not (suite.is_dir() and (suite / "run.json").is_file()):
        return load_suite(suite), run_dir
    import json

    from peftplan.errors import BadInputError

    if run_dir is not None and run_dir.resolve() != suite.resolve():
        raise BadInputError("--run-dir: give either a run directory or --run-dir, not both")
    manifest = json.loads((suite / "run.json").read_text())
    stored = parse_suite(json.loads((suite / "suite.json").read_text()), origin=f"{suite}/suite.json")
    return LoadedSuite(stored, Path(manifest["suite_file"]), Path(manifest["suite_dir"])), suite
