"""Run a suite: prepare the run directory, then run trials round-robin over methods until each has its count.

A trial counts once the harness has finished it (success, pruned, oom, timeout or failed: the
`peftplan_status` user attribute). Re-running the same suite, or `--resume`, continues: finished trials
are kept, trials another runner still holds are waited for, and a trial whose runner died is failed
by its expired heartbeat and queued again with the same params. The order of writes makes this safe:
the trial writes `outcome.json`, then the runner tells Optuna, then writes the result file; on start, a
finished trial without a result file gets it rebuilt from its outcome.

Ctrl-C ends a trial the way a dead runner's does, only at once: the trial is failed, a result file says
`canceled`, and it is queued again with the same params and `retry_of` naming it (Optuna's stale-trial retry).
A second Ctrl-C while that bookkeeping (or a result being recorded) runs is held until it is done.

Confirmation runs (`search.confirm: {top: k, seeds: n}`): once a method's search has all its trials, its k best
configurations are queued again, n times each with a new seed, in a study of their own (`<suite>/<label>+confirm`,
result files `<label>+confirm-<n>.json` with `confirm_of` naming the search trial). They run like any trial (never
pruned), resume the same way, and the report ranks methods on their mean.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError
from peftplan.harness import search, workqueue
from peftplan.harness.checks import check_rank_shares
from peftplan.harness.data import TaskInfo, prepare_task, write_task
from peftplan.harness.launch import launch_trial
from peftplan.harness.loading import WeightsSource, weights_source
from peftplan.harness.progress import LineProgress, Progress
from peftplan.harness.published import publish_suite
from peftplan.harness.rundir import RunDir, study_name, write_tables
from peftplan.harness.space import SampledConfig, as_choice, recipe_params, sample_config
from peftplan.harness.studylock import SCHEMA_LOCK, study_lock
from peftplan.harness.trial.outcome import OUTCOME, TrialOutcome, read_outcome
from peftplan.harness.trial.recipe import TrialSpec
from peftplan.results import TrialResult, TrialStatus, config_hash, read_result, write_result
from peftplan.storage_url import check_reachable, normalize_storage_url

if TYPE_CHECKING:
    import optuna

    from peftplan.harness.suite import LoadedSuite, MethodEntry

KEY_ATTR = "peftplan_key"
CONFIG_ATTR = "peftplan_config"
RECIPE_ATTR = "peftplan_recipe"
RECOVERED_ATTR = "peftplan_recovered_from"
OWNER_ATTR = "peftplan_owner"  # host:run-dir of the runner that ran the trial (it writes the result file)
CONFIRM_SUFFIX = "+confirm"  # a method entry's confirmation study and result files: <label>+confirm (no label has +)
CONFIRM_OF_ATTR = "peftplan_confirm_of"  # the search trial a confirmation run re-runs
CONFIRM_SEED_ATTR = "peftplan_confirm_seed"  # its seed
CONFIRM_SEED_STRIDE = 100_000  # confirmation seeds: training.seed + stride * (1..n) + the search trial's number
# An outcome.json status that ends a trial (a trial never writes timeout or canceled: the runner decides those).
FINISHED = frozenset({TrialStatus.SUCCESS, TrialStatus.PRUNED, TrialStatus.OOM, TrialStatus.FAILED})


@dataclass
class RunSummary:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped_by_time: bool = False
    trials_run: int = 0


class _Listener:
    """Relays one trial's events to the progress display and its eval losses to Optuna's pruner."""

    def __init__(self, trial: optuna.Trial, key: str, pruning: bool, maximize: bool, progress: Progress) -> None:
        self.trial, self.key, self.pruning, self.maximize, self.progress = trial, key, pruning, maximize, progress

    def on_event(self, event: dict[str, Any]) -> None:
        self.progress.trial_event(self.key, self.trial.number, event)

    def should_prune(self, step: int, eval_loss: float) -> bool:
        if not self.pruning:
            return False
        # The pruner follows the study's direction; a maximised study gets the loss negated.
        self.trial.report(-eval_loss if self.maximize else eval_loss, step)
        return bool(self.trial.should_prune())


class BenchRunner:
    """Runs one suite in one run directory (several runners may share a study through its storage)."""

    def __init__(self, loaded: LoadedSuite, run: RunDir, *, storage_url: str | None = None,
                 progress: Progress | None = None, join: bool = False, only: list[str] | None = None) -> None:
        """`join`: the studies exist (a worker); `only`: run just these method entries."""
        self.loaded = loaded
        self.suite = loaded.suite
        self.run_dir = run
        self.storage_url = normalize_storage_url(storage_url or self.suite.storage.url or run.default_storage())
        self.progress: Progress = progress or LineProgress()
        self.join = join
        self.owner = f"{socket.gethostname()}:{run.path}"
        self.entries = {entry.key: entry for entry in self.suite.methods if only is None or entry.key in only}
        self.studies: dict[str, optuna.Study] = {}
        self.confirm_studies: dict[str, optuna.Study] = {}  # by method entry key
        self.weights: WeightsSource | None = None
        self.task: TaskInfo | None = None

    # -- preparation ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Data split, model weights, studies (with the recipe enqueued), and repair of missing result files."""
        if not (self.run_dir.data_dir / "task.json").is_file():
            prepared = prepare_task(self.loaded)
            write_task(prepared, self.run_dir.data_dir)
            for note in prepared.info.notes:
                self.progress.message(note)
        self.task = TaskInfo(**json.loads((self.run_dir.data_dir / "task.json").read_text()))
        check_rank_shares(self.suite.training, self.task.n_train)  # the first moment the count is known
        self.weights = weights_source(self.suite.model, self.loaded)
        check_reachable(self.storage_url)
        with study_lock(self.storage_url, SCHEMA_LOCK):  # a new database: one starter creates Optuna's tables
            storage = search.make_storage(self.storage_url, self.suite.storage, self._on_stale)
        self.storage = storage
        seeds = {entry.key: self.suite.search.seed + index for index, entry in enumerate(self.suite.methods)}
        for key, entry in self.entries.items():
            name = study_name(self.suite.name, key)
            if self.join:
                study = search.open_study(storage, name, self.suite, seeds[key])
            else:
                with study_lock(self.storage_url, name):  # a bench started at the same moment waits here
                    study = search.open_study(storage, name, self.suite, seeds[key])
                    publish_suite(study, self.loaded)
                    fixed = [(recipe_params(entry, self.suite), {RECIPE_ATTR: True})] if self.suite.search.recipe else []
                    fixed += [({k: as_choice(v) for k, v in params.items()}, {}) for params in entry.enqueue]
                    workqueue.fill_once(study, self.suite.trials_for(entry), fixed, self.owner)
            self.studies[key] = study
            self._rebuild_missing_results(key, study)
        # A resumed run's display starts from what is already done, not from 0 and "-".
        self.progress.start({key: self._tally(study)[0] for key, study in self.studies.items()},
                            {key: self._best_metric(key) for key in self.studies})

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        if not self.studies:
            self.prepare()
        summary = RunSummary(self.run_dir.path)
        deadline = None if self.suite.budget.total_time is None else time.monotonic() + self.suite.budget.total_time
        while True:
            ran, waiting_on_others = False, False
            for key, entry in self.entries.items():
                study = self.studies[key]
                counted, running, queued = self._tally(study)
                target = self.suite.trials_for(entry)
                if counted >= target:
                    if self.suite.search.confirm is None:
                        continue
                    if running > 0:  # the search's last trials decide which configurations are confirmed
                        waiting_on_others = True
                        continue
                    study = self._confirm_study(key, study)
                    key = confirm_key(key)
                    _, running, queued = self._tally(study)
                    if queued == 0:
                        waiting_on_others = waiting_on_others or running > 0
                        continue
                elif queued == 0 and (running > 0 or not self._top_up(study, target)):
                    waiting_on_others = True  # another runner (or a dead one, until its heartbeat expires)
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    summary.stopped_by_time = True
                    self.progress.message("budget.total_time reached: no new trials start")
                    return self._finish(summary)
                if self._run_one(key, entry, study):
                    summary.trials_run += 1
                ran = True  # tally again: a claim lost to another runner is no reason to wait
            if ran:
                continue
            if not waiting_on_others:
                return self._finish(summary)
            time.sleep(self.suite.storage.heartbeat_interval)
            for study in [*self.studies.values(), *self.confirm_studies.values()]:
                search.fail_stale_trials(study)

    def _confirm_study(self, key: str, search_study: optuna.Study) -> optuna.Study:
        """The method's confirmation study, created and filled once (under its lock) from the finished search."""
        if key in self.confirm_studies:
            return self.confirm_studies[key]
        name = study_name(self.suite.name, confirm_key(key))
        seed = self.suite.search.seed + [e.key for e in self.suite.methods].index(key)
        with study_lock(self.storage_url, name):
            study = search.open_study(self.storage, name, self.suite, seed)
            queue = self._confirm_queue(search_study)
            workqueue.fill_once(study, len(queue), queue, self.owner)
        self.confirm_studies[key] = study
        self._rebuild_missing_results(confirm_key(key), study)
        return study

    def _confirm_queue(self, search_study: optuna.Study) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The top configurations of a finished search, each with its confirmation seeds."""
        from optuna.trial import TrialState

        confirm = self.suite.search.confirm
        assert confirm is not None
        maximize = search.directions(self.suite)[0] == "maximize"
        done = [t for t in search_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values
                and t.user_attrs.get(search.STATUS_ATTR) == "success"]
        done.sort(key=lambda t: (-t.values[0] if maximize else t.values[0], t.number))
        return [(dict(t.params), {CONFIRM_OF_ATTR: t.number,
                                  CONFIRM_SEED_ATTR: self.suite.training.seed + CONFIRM_SEED_STRIDE * s + t.number})
                for t in done[: confirm.top] for s in range(1, confirm.seeds + 1)]

    def _top_up(self, study: optuna.Study, target: int) -> int:
        """Queue what a study lacks, under its lock, so that two runners finding it short add the trials once."""
        with study_lock(self.storage_url, study.study_name):
            return workqueue.top_up(study, target, *self._tally(study))

    def _tally(self, study: optuna.Study) -> tuple[int, int, int]:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counted = sum(1 for t in trials if t.state.is_finished() and search.STATUS_ATTR in t.user_attrs)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        queued = sum(1 for t in trials if t.state == TrialState.WAITING)
        return counted, running, queued

    def _run_one(self, key: str, entry: MethodEntry, study: optuna.Study) -> bool:
        """Claim a queued trial and run it; False when another runner claimed the last one first."""
        search.fail_stale_trials(study)
        trial = None
        try:  # from the claim on: a trial left RUNNING without a heartbeat would never be retried
            with _interrupts_held():
                trial = workqueue.claim(study)
            if trial is None:
                return False
            self._run_claimed(key, entry, study, trial)
        except KeyboardInterrupt:
            if trial is not None:
                with _interrupts_held():
                    self._interrupted(key, entry, study, trial)
            raise
        return True

    def _run_claimed(self, key: str, entry: MethodEntry, study: optuna.Study, trial: optuna.Trial) -> None:
        trial.set_user_attr(OWNER_ATTR, self.owner)
        try:
            sampled = sample_config(trial, entry, self.suite)
        except BadInputError as exc:  # e.g. a sampled target preset the model lacks
            with _interrupts_held():
                self._record(key, entry, study, trial, None, "failed", None, str(exc), 0.0)
            return
        config = self._resolved_config(entry, sampled)
        pruning = search.pruning_enabled(self.suite) and not is_confirm_key(key)  # a confirmation runs to the end
        trial.set_user_attr(KEY_ATTR, key)
        trial.set_user_attr(CONFIG_ATTR, config)
        self.progress.trial_started(key, trial.number, trial.params, self.suite.training.steps)
        spec = TrialSpec(
            run_dir=str(self.run_dir.path),
            suite=self.loaded.normalized(),
            suite_dir=str(self.loaded.base_dir),
            method_key=key,
            method=entry.name,
            method_config=sampled.config.model_dump(mode="json"),
            lr=sampled.lr,
            trial_number=trial.number,
            pruning=pruning,
            weights=vars(self.weights) if self.weights is not None else {},
            threads=self._threads(),
            seed=trial.user_attrs.get(CONFIRM_SEED_ATTR),
        )
        maximize = search.directions(self.suite)[0] == "maximize"
        listener = _Listener(trial, key, pruning, maximize, self.progress)
        with search.Heartbeat(self.storage, trial._trial_id, self.suite.storage.heartbeat_interval):
            launched = launch_trial(spec, self.run_dir.work_dir(key, trial.number),
                                    timeout=self.suite.budget.trial_timeout, listener=listener,
                                    env=self._trial_env())
        with _interrupts_held():  # told and written together, or not at all
            self._record(key, entry, study, trial, config, launched.status, launched.outcome, launched.error,
                         launched.wall_time_s)

    def _interrupted(self, key: str, entry: MethodEntry, study: optuna.Study, trial: optuna.Trial) -> None:
        """Ctrl-C during a claimed trial: fail it and queue it again, as `_on_stale` does for a dead runner."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.trial import TrialState

        frozen = self.storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return  # its result was recorded before the interrupt took effect
        config = frozen.user_attrs.get(CONFIG_ATTR) or {"method": entry.name, "params": frozen.params}
        outcome = read_outcome(self.run_dir.work_dir(key, trial.number) / OUTCOME)
        if outcome is not None and outcome.status in FINISHED:  # it ended just before the interrupt
            wall = outcome.metrics.wall_time_s or 0.0
            self._record(key, entry, study, trial, config, outcome.status.value, outcome, outcome.error, wall)
            return
        study.tell(trial, state=TrialState.FAIL)
        # Optuna's retry of a stale trial: same params and distributions, and `failed_trial` (our `retry_of`)
        # naming it. No retry limit: an interrupt is the user's doing, not the trial's.
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, self.storage.get_trial(trial._trial_id))
        self._write(key, entry, trial.number, config, frozen.params, "canceled", None,
                    "interrupted (Ctrl-C); queued again with the same params", 0.0,
                    frozen.system_attrs.get("failed_trial"), frozen.user_attrs.get(CONFIRM_OF_ATTR))

    def _record(self, key: str, entry: MethodEntry, study: optuna.Study, trial: optuna.Trial,
                config: dict[str, Any] | None, status: str, outcome: TrialOutcome | None, error: str | None,
                wall: float) -> None:
        """Tell Optuna, then write the result file (see the module docstring for why in this order)."""
        from optuna.trial import TrialState

        config = config or {"method": entry.name, "params": trial.params}
        retry_of = self.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        result = self._result(key, entry, trial.number, config, trial.params, status, outcome, error, wall, retry_of,
                              trial.user_attrs.get(CONFIRM_OF_ATTR))
        trial.set_user_attr(search.STATUS_ATTR, status)
        peak = _peak_bytes(result)
        if self.suite.budget.vram is not None and peak is not None:
            trial.set_user_attr(search.MEMORY_EXCESS_ATTR, float(peak - self.suite.budget.vram))
        value = _objective_value(result, self.suite.search.objective)
        if status == "success" and value is not None:
            values = [value, float(peak or 0)] if self.suite.search.multi_objective else value
            study.tell(trial, values)
        elif status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
        write_result(result, self.run_dir.trial_path(key, trial.number))
        write_tables(self.run_dir)
        self.progress.trial_finished(key, trial.number, status, result.metrics.task_metric, self._best_metric(key))

    # -- results --------------------------------------------------------------------------------------
    def _resolved_config(self, entry: MethodEntry, sampled: SampledConfig) -> dict[str, Any]:
        return {
            "model": self.suite.model.display_id,
            "task": self.task.name if self.task else None,
            **sampled.as_dict(),
            "training": self.suite.training.model_dump(mode="json"),
        }

    def _result(self, key: str, entry: MethodEntry, number: int, config: dict[str, Any], params: dict[str, Any],
                status: str, outcome: TrialOutcome | None, error: str | None, wall: float,
                retry_of: int | None, confirm_of: int | None = None) -> TrialResult:
        """The result file of a trial: what it was, and what its outcome measured (none: a trial that left no
        outcome, e.g. killed or timed out before writing one)."""
        if outcome is None:
            outcome = TrialOutcome.start(self._device_guess()).end()
        metrics = outcome.metrics.model_copy(update={"wall_time_s": wall or outcome.metrics.wall_time_s})
        return TrialResult(
            suite_name=self.suite.name,
            suite_hash=self.loaded.hash,
            study_name=study_name(self.suite.name, key),
            model=self.suite.model.display_id,
            task=self.task.name if self.task else "",
            method=entry.name,
            label=entry.key,
            trial_number=number,
            config=config,
            config_hash=config_hash(config),
            params=dict(params),
            retry_of=retry_of,
            confirm_of=confirm_of,
            status=TrialStatus(status),
            error=error,
            metrics=metrics,
            **outcome.measured(),
        )

    def _write(self, key: str, entry: MethodEntry, number: int, config: dict[str, Any], params: dict[str, Any],
               status: str, outcome: TrialOutcome | None, error: str | None, wall: float,
               retry_of: int | None, confirm_of: int | None = None) -> None:
        result = self._result(key, entry, number, config, params, status, outcome, error, wall, retry_of, confirm_of)
        write_result(result, self.run_dir.trial_path(key, number))
        write_tables(self.run_dir)

    def _best_metric(self, key: str) -> float | None:
        best = None
        for path in self.run_dir.trials_dir.glob(f"{key}-*.json"):
            result = read_result(path)
            value = result.metrics.task_metric
            if result.status == TrialStatus.SUCCESS and value is not None and (best is None or value > best):
                best = value
        return best

    def _rebuild_missing_results(self, key: str, study: optuna.Study) -> None:
        """A runner killed between telling Optuna and writing the file: rebuild the file from the outcome."""
        entry = self.entries[base_key(key)]
        for trial in study.get_trials(deepcopy=False):
            status = trial.user_attrs.get(search.STATUS_ATTR)
            if status is None or not trial.state.is_finished() or self.run_dir.trial_path(key, trial.number).exists():
                continue
            if trial.user_attrs.get(OWNER_ATTR, self.owner) != self.owner:
                continue  # another runner's trial: its result file is in its own run directory
            source = trial.user_attrs.get(RECOVERED_ATTR, trial.number)
            outcome = read_outcome(self.run_dir.work_dir(key, source) / OUTCOME)
            config = trial.user_attrs.get(CONFIG_ATTR) or {"method": entry.name, "params": trial.params}
            wall = (outcome.metrics.wall_time_s or 0.0) if outcome is not None else 0.0
            self._write(key, entry, trial.number, config, trial.params, status, outcome,
                        outcome.error if outcome is not None else None, wall, trial.system_attrs.get("failed_trial"),
                        trial.user_attrs.get(CONFIRM_OF_ATTR))

    def _on_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose runner died: keep its outcome if it had finished, else queue it again."""
        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        key = trial.user_attrs.get(KEY_ATTR) or study.study_name.rsplit("/", 1)[-1]
        entry = self.entries.get(base_key(key))
        if entry is None:
            return
        mine = trial.user_attrs.get(OWNER_ATTR, self.owner) == self.owner
        outcome = read_outcome(self.run_dir.work_dir(key, trial.number) / OUTCOME) if mine else None
        config = trial.user_attrs.get(CONFIG_ATTR) or {"method": entry.name, "params": trial.params}
        if outcome is not None and outcome.status in FINISHED:
            status = outcome.status.value
            result = self._result(key, entry, trial.number, config, trial.params, status, outcome,
                                  outcome.error, 0.0, None, trial.user_attrs.get(CONFIRM_OF_ATTR))
            value = _objective_value(result, self.suite.search.objective)
            finished = status == "success" and value is not None
            peak = float(_peak_bytes(result) or 0)
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if finished else (
                    optuna.trial.TrialState.PRUNED if status == "pruned" else optuna.trial.TrialState.FAIL),
                values=(([value, peak] if self.suite.search.multi_objective else [value])
                        if finished and value is not None else None),
                params=trial.params, distributions=trial.distributions,
                user_attrs={**trial.user_attrs, search.STATUS_ATTR: status, RECOVERED_ATTR: trial.number,
                            OWNER_ATTR: self.owner},
            ))
            return  # the copy has no result file yet: `_rebuild_missing_results` writes it on the next start
        RetryHeartbeatStaleTrialCallback(max_retry=self.suite.storage.max_retry)(study, trial)
        self._write(key, entry, trial.number, config, trial.params, "canceled", None,
                    "its runner stopped (heartbeat expired); queued again with the same params", 0.0,
                    trial.system_attrs.get("failed_trial"), trial.user_attrs.get(CONFIRM_OF_ATTR))

    # -- helpers --------------------------------------------------------------------------------------
    def _trial_env(self) -> dict[str, str]:
        """Trials of a local or embedded model never reach the Hub."""
        if self.weights is not None and self.weights.kind == "pretrained" and not Path(self.weights.location).is_dir():
            return {}
        return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def _threads(self) -> int | None:
        """The suite's `training.threads`, else the cores idle right now (see `harness/cpu.py`)."""
        if self.suite.training.threads is not None:
            return self.suite.training.threads
        if self.suite.training.device == "cuda":
            return None
        from peftplan.harness.cpu import idle_cores

        return idle_cores()

    def _device_guess(self) -> str:
        return "cuda:0" if self.suite.training.device == "cuda" else "cpu"

    def _finish(self, summary: RunSummary) -> RunSummary:
        for path in self.run_dir.result_paths():
            result = read_result(path)
            summary.counts[result.status.value] = summary.counts.get(result.status.value, 0) + 1
            key = result.label or result.method
            value = result.metrics.task_metric
            if result.status == TrialStatus.SUCCESS and value is not None and result.confirm_of is None:
                if key not in summary.best or value > summary.best[key]["task_metric"]:
                    summary.best[key] = {"trial": result.trial_number, "task_metric": value,
                                         "metric": result.metrics.task_metric_name, "params": result.params}
        write_tables(self.run_dir)
        self.progress.close()
        return summary


def confirm_key(key: str) -> str:
    """The key (study and result files) of a method entry's confirmation runs."""
    return f"{key}{CONFIRM_SUFFIX}"


def is_confirm_key(key: str) -> bool:
    return key.endswith(CONFIRM_SUFFIX)


def base_key(key: str) -> str:
    """The method entry a study key belongs to."""
    return key.removesuffix(CONFIRM_SUFFIX)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block and raise it at the end.

    Only where Ctrl-C raises KeyboardInterrupt: in the main thread, and unless SIGINT was ignored or handled
    otherwise (a `nohup` or background run keeps ignoring it).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _peak_bytes(result: TrialResult) -> int | None:
    if result.memory is None:
        return None
    return result.memory.peak_allocated or result.memory.rss_peak


def _objective_value(result: TrialResult, objective: str) -> float | None:
    if objective == "eval_loss":
        return result.metrics.eval_loss
    return result.metrics.task_metric
