"""The Optuna side of a bench: storage with heartbeats, one study per method, sampler, pruner, constraints.

Storage is Optuna's own RDB storage: sqlite in the run directory by default, or any URL the suite gives
(PostgreSQL for several workers). Heartbeats mark a trial whose runner died as failed after the grace
period; the stale-trial callback then either re-creates it as waiting (it runs again, with the same
params) or, when the dead runner's trial had already finished, records its outcome instead.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import optuna

    from peftplan.harness.suite import StorageSection, Suite

STATUS_ATTR = "peftplan_status"  # set on every trial the harness finished itself
DEFAULT_REDUCTION_FACTOR = 3  # successive halving and Hyperband: Optuna's default
MEMORY_EXCESS_ATTR = "peftplan_memory_excess"  # measured peak minus budget.vram (<= 0 is feasible)


def make_storage(
    url: str, section: StorageSection, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with heartbeats; `on_stale` runs for each trial whose heartbeat expired."""
    from optuna.storages import RDBStorage

    from peftplan.storage_url import engine_kwargs, quiet_optuna

    quiet_optuna()

    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url),
        heartbeat_interval=section.heartbeat_interval,
        grace_period=section.grace_period,
        heartbeat_stale_trial_callback=on_stale,
    )


def directions(suite: Suite) -> list[str]:
    first = "maximize" if suite.search.objective == "task_metric" else "minimize"
    return [first, "minimize"] if suite.search.multi_objective else [first]


def memory_constraint(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Optuna constraints_func: feasible when the measured peak stays within budget.vram."""
    return [float(trial.user_attrs.get(MEMORY_EXCESS_ATTR, 0.0))]


def make_sampler(suite: Suite, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    constraints = memory_constraint if suite.budget.vram is not None else None
    kind = suite.search.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints)


def pruning_enabled(suite: Suite) -> bool:
    return not suite.search.multi_objective and suite.search.pruner.kind != "none"


def make_pruner(suite: Suite, steps: int | None) -> optuna.pruners.BasePruner:
    import optuna

    section = suite.search.pruner
    if not pruning_enabled(suite):
        return optuna.pruners.NopPruner()
    if section.kind == "percentile":
        return optuna.pruners.PercentilePruner(
            section.percentile, n_startup_trials=section.startup_trials, n_warmup_steps=section.warmup_steps
        )
    # Multi-fidelity: the budget is training steps, and a trial's first rung is its first eval (eval_every); the
    # rungs (eval_every x reduction_factor^k) are multiples of eval_every, so each falls on an eval step.
    factor = section.reduction_factor or DEFAULT_REDUCTION_FACTOR
    if section.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=suite.training.eval_every, reduction_factor=factor,
                                                      min_early_stopping_rate=0)
    if section.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=suite.training.eval_every, max_resource=steps or "auto",
                                              reduction_factor=factor)
    return optuna.pruners.MedianPruner(n_startup_trials=section.startup_trials, n_warmup_steps=section.warmup_steps)


def open_study(storage: optuna.storages.BaseStorage, name: str, suite: Suite, seed: int) -> optuna.Study:
    import optuna

    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(suite, seed),
        pruner=make_pruner(suite, suite.training.steps),
        directions=cast(Any, directions(suite)),
        load_if_exists=True,
    )


class Heartbeat:
    """Records a trial's heartbeat every interval while the trial runs (what `study.optimize` does)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            except Exception:  # a storage hiccup must not kill the trial; the next beat retries
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
