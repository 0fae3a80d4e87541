"""A study's trials as a work queue, so that several runners together run each trial exactly once.

When a study is created, every trial it will run is enqueued as WAITING (fixed params where the suite
enqueues some, none otherwise: the sampler then samples at claim time). A runner only ever claims a
WAITING trial; Optuna's RDB storage moves it to RUNNING under a row lock (`SELECT ... FOR UPDATE` on
PostgreSQL), so two runners never get the same one, and no runner creates a trial beyond the count.
A trial whose runner died is queued again by the heartbeat callback with the same params.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def fill_queue(study: optuna.Study, target: int, fixed: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Enqueue the fixed trials `(params, user_attrs)` in order, then free ones up to `target`."""
    for params, user_attrs in fixed:
        study.enqueue_trial(params, user_attrs=user_attrs)
    for _ in range(max(0, target - len(fixed))):
        study.enqueue_trial({})


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial to RUNNING and return it; None when the queue is empty."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except UpdateFinishedTrialError:
            continue  # another runner finished it in between
    return None


def top_up(study: optuna.Study, target: int, counted: int, running: int, queued: int) -> int:
    """Enqueue free trials when the study has fewer than `target` counted, running or queued trials.

    This happens when a retried trial ran out of retries, or for a study created before the queue was
    filled up front. Returns how many were added.
    """
    missing = target - counted - running - queued
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)
